"""Post-processing of raw model outputs (pooling is in the graph) and BGE-M3 scoring.

Formulas follow FlagEmbedding's BGEM3FlagModel (encode, compute_lexical_matching_score,
colbert_score, compute_score); tests compare against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np


class SparseVector(TypedDict):
    indices: list[int]
    values: list[float]


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    # torch.nn.functional.normalize's eps: an all-zero row stays zero instead of NaN.
    return (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


def lexical_weights(
    token_weights: np.ndarray, token_ids: Sequence[int], special_ids: Sequence[int]
) -> SparseVector:
    """Per token id the largest weight, special tokens dropped, only weights > 0, ids ascending."""
    ids = np.asarray(token_ids, dtype=np.int64)
    weights = np.asarray(token_weights[: len(ids)], dtype=np.float32)
    keep = (weights > 0) & ~np.isin(ids, np.asarray(special_ids, dtype=np.int64))
    ids, weights = ids[keep], weights[keep]
    if ids.size == 0:
        return {"indices": [], "values": []}
    order = np.argsort(ids, kind="stable")
    ids, weights = ids[order], weights[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return {"indices": ids[starts].tolist(), "values": np.maximum.reduceat(weights, starts).tolist()}


def colbert_vectors(vectors: np.ndarray, n_tokens: int, normalize: bool = True) -> np.ndarray:
    """One vector per token after the first ([CLS] is not used), padding dropped."""
    out = np.ascontiguousarray(vectors[: max(n_tokens - 1, 0)], dtype=np.float32)
    return l2_normalize(out) if normalize else out


def dense_score(q: np.ndarray, p: np.ndarray) -> float:
    return float(np.dot(q, p))


def lexical_score(q: SparseVector, p: SparseVector) -> float:
    """Sum over shared token ids of the product of weights."""
    _, qi, pi = np.intersect1d(q["indices"], p["indices"], assume_unique=True, return_indices=True)
    return float(np.dot(np.asarray(q["values"])[qi], np.asarray(p["values"])[pi]))


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """Late interaction: for each query token its best passage token, averaged over query tokens."""
    if len(q) == 0 or len(p) == 0:
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / len(q))


DEFAULT_WEIGHTS = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}  # BGE-M3 model card


def combined_score(scores: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """Weighted mean of the modes present in both `scores` and `weights` (M3's compute_score)."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    used = {mode: w for mode, w in weights.items() if mode in scores}
    total = sum(used.values())
    if total <= 0:
        raise ValueError("combined_score needs at least one positive weight for a mode that was scored")
    return float(sum(scores[mode] * w for mode, w in used.items()) / total)
