"""Post-processing of raw model outputs (pooling is in the graph): normalised dense vectors, lexical
weights and ColBERT vectors, as FlagEmbedding's BGEM3FlagModel.encode makes them; tests compare against it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class Embeddings:
    """What one `embed` call returns, in input order; absent outputs are None."""

    dense: np.ndarray | None  # float32[n, dim]
    sparse: list[SparseVector] | None
    colbert: list[np.ndarray] | None  # float32[tokens - 1, colbert_dim] per text
    token_counts: list[int]

    def slice(self, start: int, end: int, outputs: frozenset[str] | set[str]) -> Embeddings:
        """Rows start:end, keeping only the named outputs."""
        return Embeddings(
            dense=self.dense[start:end] if self.dense is not None and "dense" in outputs else None,
            sparse=self.sparse[start:end] if self.sparse is not None and "sparse" in outputs else None,
            colbert=self.colbert[start:end] if self.colbert is not None and "colbert" in outputs else None,
            token_counts=self.token_counts[start:end],
        )

    def normalized(self) -> Embeddings:
        """L2-normalised dense and colbert vectors (sparse weights are left as they are)."""
        return Embeddings(
            dense=l2_normalize(self.dense) if self.dense is not None else None,
            sparse=self.sparse,
            colbert=[l2_normalize(v) for v in self.colbert] if self.colbert is not None else None,
            token_counts=self.token_counts,
        )
