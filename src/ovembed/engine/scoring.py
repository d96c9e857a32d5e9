"""BGE-M3 scores between a query and a passage: dense, lexical, ColBERT and their weighted sum.

Formulas follow FlagEmbedding's BGEM3FlagModel (compute_lexical_matching_score, colbert_score,
compute_score); tests compare against it."""

from __future__ import annotations

import numpy as np

from ovembed.engine.outputs import SparseVector


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
