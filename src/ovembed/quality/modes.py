"""BGE-M3's search modes over a whole corpus for `ovembed eval`: dense, sparse (lexical weights), colbert
(late interaction) and hybrid (M3's weighted sum of the three, as FlagEmbedding's compute_score
"colbert+sparse+dense").

Every mode is an exhaustive search: each query is scored against every document, so a mode's numbers are its
own, not a rerank of another mode's candidates."""

from __future__ import annotations

import numpy as np

from ovembed.embedders import Embedder
from ovembed.engine.outputs import SparseVector
from ovembed.engine.scoring import colbert_score, lexical_score
from ovembed.quality.cache import Encoded

MODES = ("dense", "sparse", "colbert", "hybrid")
NEEDS = {"dense": {"dense"}, "sparse": {"sparse"}, "colbert": {"colbert"}, "hybrid": {"dense", "sparse", "colbert"}}
DEPTH = 100  # documents kept per query: enough for Recall@100
SCORE_CELLS = 2**24  # query-token x document-token similarities computed at once (64 MB of float32)


class Scorer:
    """Scores blocks of queries against a whole corpus in one mode (or the weighted sum of all three)."""

    def __init__(self, docs: Encoded, mode: str, weights: dict[str, float]):
        self.mode, self.weights, self.docs = mode, weights, docs
        if "sparse" in NEEDS[mode]:
            self._postings = self._invert(docs.sparse)
        if "colbert" in NEEDS[mode]:
            self._tokens = np.concatenate(docs.colbert)
            self._starts = np.cumsum([0] + [len(v) for v in docs.colbert[:-1]])

    @property
    def n_docs(self) -> int:
        return len(self.docs.dense if self.docs.dense is not None else self.docs.sparse or self.docs.colbert)

    @staticmethod
    def _invert(sparse: list[SparseVector]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """token id -> (document rows, weights): a query touches only the documents sharing its tokens."""
        tokens = np.asarray([i for v in sparse for i in v["indices"]], np.int64)
        rows = np.repeat(np.arange(len(sparse)), [len(v["indices"]) for v in sparse])
        weights = np.asarray([x for v in sparse for x in v["values"]], np.float32)
        order = np.argsort(tokens, kind="stable")
        tokens, rows, weights = tokens[order], rows[order], weights[order]
        cuts = np.flatnonzero(np.diff(tokens)) + 1
        return {int(t[0]): (r, w) for t, r, w in zip(np.split(tokens, cuts), np.split(rows, cuts),
                                                      np.split(weights, cuts)) if len(t)}

    def _sparse(self, queries: list[SparseVector]) -> np.ndarray:
        out = np.zeros((len(queries), self.n_docs), np.float32)
        for row, q in enumerate(queries):
            for token, weight in zip(q["indices"], q["values"]):
                if token in self._postings:
                    rows, weights = self._postings[token]
                    np.add.at(out[row], rows, weight * weights)
        return out

    def _colbert(self, queries: list[np.ndarray]) -> np.ndarray:
        """For each query token the best token of each document (max over the document's segment), averaged."""
        out = np.zeros((len(queries), self.n_docs), np.float32)
        step = max(1, SCORE_CELLS // max(len(self._tokens), 1))
        for row, q in enumerate(queries):
            if len(q) == 0:
                continue
            best = np.zeros(self.n_docs, np.float32)
            for start in range(0, len(q), step):
                sims = q[start : start + step] @ self._tokens.T
                best += np.maximum.reduceat(sims, self._starts, axis=1).sum(axis=0)
            out[row] = best / len(q)
        return out

    def scores(self, q: Encoded) -> np.ndarray:
        """float32[len(queries), n_docs]."""
        parts = {}
        if "dense" in NEEDS[self.mode]:
            parts["dense"] = q.dense @ self.docs.dense.T
        if "sparse" in NEEDS[self.mode]:
            parts["sparse"] = self._sparse(q.sparse)
        if "colbert" in NEEDS[self.mode]:
            parts["colbert"] = self._colbert(q.colbert)
        return _combine(parts, self.mode, self.weights)


def _combine(parts: dict[str, np.ndarray], mode: str, weights: dict[str, float]) -> np.ndarray:
    """A mode's own scores, or for hybrid the weighted mean of the three (M3's compute_score)."""
    if mode != "hybrid":
        return parts[mode]
    return sum(parts[m] * w for m, w in weights.items()) / sum(weights.values())


def top_documents(scores: np.ndarray, doc_ids: list[str], depth: int = DEPTH) -> list[list[str]]:
    """Each row's best `depth` documents, best first; equal scores keep corpus order."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return [[doc_ids[j] for j in row] for row in order]


def pair_scores(a: Encoded, b: Encoded, mode: str, weights: dict[str, float]) -> np.ndarray:
    """Score of a[i] against b[i] for every i (STS)."""
    parts = {}
    if "dense" in NEEDS[mode]:
        parts["dense"] = np.sum(a.dense * b.dense, axis=1)
    if "sparse" in NEEDS[mode]:
        parts["sparse"] = np.array([lexical_score(x, y) for x, y in zip(a.sparse, b.sparse)])
    if "colbert" in NEEDS[mode]:
        parts["colbert"] = np.array([colbert_score(x, y) for x, y in zip(a.colbert, b.colbert)])
    return _combine(parts, mode, weights)


def modes_for(embedder: Embedder, wanted: list[str]) -> list[str]:
    have = {"dense", *embedder.outputs}
    return [m for m in wanted if NEEDS[m] <= have]
