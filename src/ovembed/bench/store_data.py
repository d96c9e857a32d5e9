"""The synthetic corpora the store benchmarks and scale tests fill stores with, and exact search over them (the
ground truth recall is measured against). Seeded: the same arguments give the same vectors."""

from __future__ import annotations

import numpy as np

SPARSE_VOCAB = 250_002  # BGE-M3's vocabulary
SPARSE_TOKENS = 80  # distinct weighted tokens of a ~200-token passage
QUERY_TOKENS = 10


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def corpus_vectors(n: int, dim: int, seed: int, topics: int = 500, spread: float = 0.7) -> np.ndarray:
    """Unit vectors with topical structure, like real embeddings: each near one of `topics` centres.
    (Uniform random vectors in 1024 dims have no nearest neighbours to speak of: every cosine is ~0, and
    an approximate index cannot tell them apart; no real corpus looks like that.) Made in blocks, so 1M x 1024
    needs the result's 4 GB and little more."""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(topics, dim, seed + 100)
    out = np.empty((n, dim), np.float32)
    noise = np.random.default_rng(seed + 200)
    for start in range(0, n, 65536):
        block = out[start:start + 65536]
        block[:] = centres[rng.integers(0, topics, len(block))]
        extra = noise.standard_normal(block.shape, dtype=np.float32)
        extra *= spread / np.linalg.norm(extra, axis=1, keepdims=True)
        block += extra
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def query_vectors(corpus: np.ndarray, count: int, seed: int, noise: float = 0.5) -> np.ndarray:
    """Queries near stored vectors (as a question is near its passage), not uniform noise."""
    rng = np.random.default_rng(seed)
    queries = corpus[rng.integers(0, len(corpus), count)] + noise * unit_vectors(count, corpus.shape[1], seed + 300)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def graded_corpus_vectors(n: int, dim: int, seed: int, topics: int = 100, branching: tuple[int, ...] = (16, 8),
                          spreads: tuple[float, ...] = (0.65, 0.32, 0.3), doc: float = 0.25, chunks: int = 2,
                          chunk: float = 0.4, mean: float = 0.45, latent: int = 256, decay: float = 0.8,
                          noise: float = 0.3) -> np.ndarray:
    """Unit vectors whose neighbourhoods are graded like real embeddings' (scripts/embedding-lid.py compares their
    local intrinsic dimension and score gaps with all-MiniLM-L6-v2's): a tree of topics, each split `branching`
    times with shrinking `spreads`; documents near its leaves, and about `chunks` chunks per document, which are
    consecutive rows (as a chunked corpus is stored). Every offset lives in a `latent`-dimensional space whose
    variances fall off as a power law (rank^-decay), mapped into `dim` by a random orthonormal basis, plus a
    component `mean` shared by all (real embeddings are anisotropic: unrelated texts score ~0.2) and a little
    isotropic `noise`. In corpus_vectors' data a topic's members are all equally far apart; here the 1st, 10th
    and 100th neighbours score about 0.8, 0.7 and 0.6. Made in blocks: 1M x 1024 needs the result's 4 GB."""
    rng = np.random.default_rng(seed + 600)
    width = min(dim, latent)
    basis = np.linalg.qr(rng.standard_normal((dim, width)))[0].T.astype(np.float32)
    scale = np.arange(1, width + 1) ** (-decay / 2)
    scale = (scale / np.linalg.norm(scale)).astype(np.float32)  # a draw of spread s has expected length s

    def draw(count: int, spread: float) -> np.ndarray:
        return rng.standard_normal((count, width), dtype=np.float32) * (spread * scale)

    nodes = mean * _unit_rows(rng.standard_normal((1, width), dtype=np.float32)) + draw(topics, spreads[0])
    for split, spread in zip(branching, spreads[1:], strict=True):
        nodes = np.repeat(nodes, split, axis=0) + draw(len(nodes) * split, spread)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        block = out[start:start + 65536]
        docs = -(-len(block) // chunks)
        places = nodes[rng.integers(0, len(nodes), docs)] + draw(docs, doc)
        np.matmul(places[np.sort(rng.integers(0, docs, len(block)))] + draw(len(block), chunk), basis, out=block)
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        _unit_rows(block)
    return out


def graded_query_vectors(corpus: np.ndarray, count: int, seed: int, shift: float = 1.2, noise: float = 0.4,
                         sample: int = 2048) -> np.ndarray:
    """Queries for graded_corpus_vectors' data, as far from their stored vector as a real question is from its
    passage (cosine ~0.65, where query_vectors' stays at ~0.9): the stored vector moved by a random draw with
    the corpus's own covariance (estimated from `sample` rows: a question differs from its passage the way
    texts differ, not uniformly in every direction), scaled by `shift`, plus isotropic `noise`. Like
    query_vectors, the stored vectors are `np.random.default_rng(seed).integers(0, len(corpus), count)`."""
    rng = np.random.default_rng(seed)
    queries = corpus[rng.integers(0, len(corpus), count)]
    rows = corpus[np.sort(rng.choice(len(corpus), min(len(corpus), sample), replace=False))]
    rows = rows - rows.mean(axis=0)
    queries += np.float32(shift / np.sqrt(len(rows))) * (rng.standard_normal((count, len(rows)), dtype=np.float32) @ rows)
    queries += noise * _unit_rows(rng.standard_normal(queries.shape, dtype=np.float32))
    return _unit_rows(queries)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors /= np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    return vectors


def exact_dense_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """The ids of each query's k nearest vectors by inner product (blocks of 100k rows: bounded memory)."""
    best_scores = np.zeros((len(queries), 0), np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), 100_000):
        block_ids = ids[start:start + 100_000]
        scores = np.concatenate([best_scores, queries @ vectors[start:start + 100_000].T], axis=1)
        rows = np.concatenate([best_ids, np.broadcast_to(block_ids, (len(queries), len(block_ids)))], axis=1)
        keep = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(rows, keep, axis=1)
    return [set(row.tolist()) for row in best_ids]


def sparse_corpus(n: int, seed: int, tokens: int = SPARSE_TOKENS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lexical weights shaped like BGE-M3's: token ids Zipf-distributed over the vocabulary (a few tokens are in
    most passages, most are rare), `tokens` distinct ones per chunk, weights in (0, 0.35]. Returns CSR arrays
    (offsets of n + 1, token ids, weights); chunk i is ids[offsets[i]:offsets[i + 1]]."""
    rng = np.random.default_rng(seed + 400)
    counts = np.clip(rng.poisson(tokens, n), 4, 4 * tokens)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    raw = (rng.zipf(1.15, len(rows)) - 1) % (SPARSE_VOCAB - 1) + 1
    keys = np.unique(rows * SPARSE_VOCAB + raw)  # sorted by chunk, then token; a repeated token merged
    rows, ids = keys // SPARSE_VOCAB, (keys % SPARSE_VOCAB).astype(np.int32)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    # Frequent tokens weigh less (as BGE-M3's learned weights do for stop words); a rare one up to 0.35.
    weights = (0.35 * rng.beta(2, 5, len(ids)) * _damping(ids)).astype(np.float32) + 1e-3
    return offsets, ids, weights


def _damping(ids: np.ndarray) -> np.ndarray:
    """How much less a token weighs for being frequent: ids are ranks by frequency (token 1 is the most common,
    ~0.09 of a rare token's weight; from rank ~3000 on, none)."""
    return np.minimum(1.0, np.log1p(ids) / 8)


def sparse_row(corpus: tuple[np.ndarray, np.ndarray, np.ndarray], i: int) -> dict:
    offsets, ids, weights = corpus
    lo, hi = offsets[i], offsets[i + 1]
    return {"indices": ids[lo:hi].tolist(), "values": weights[lo:hi].tolist()}


def sparse_queries(corpus: tuple[np.ndarray, np.ndarray, np.ndarray], count: int, seed: int,
                   tokens: int = QUERY_TOKENS) -> list[dict]:
    """Queries that share most of their tokens with one stored chunk (as a question with its passage), plus a
    few common tokens of their own."""
    offsets, ids, _ = corpus
    rng = np.random.default_rng(seed + 500)
    out = []
    for target in rng.integers(0, len(offsets) - 1, count):
        own = ids[offsets[target]:offsets[target + 1]]
        picked = set(rng.choice(own, min(len(own), tokens - 2), replace=False).tolist())
        picked.update(int(t) for t in rng.integers(1, 50, 2))
        picked = np.asarray(sorted(picked))
        # A query's frequent tokens weigh less too, as the passages' do (BGE-M3 learns that on both sides).
        values = rng.uniform(0.05, 0.3, len(picked)) * _damping(picked)
        out.append({"indices": picked.tolist(), "values": values.round(4).tolist()})
    return out


def exact_sparse_top(corpus: tuple[np.ndarray, np.ndarray, np.ndarray], ids: np.ndarray, queries: list[dict],
                     k: int) -> list[list[tuple[int, float]]]:
    """Each query's k best chunks by the sum of weight products over shared tokens (ties by chunk id), as
    (chunk id, score); chunks sharing no token are left out."""
    offsets, tokens, weights = corpus
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    order = np.argsort(tokens, kind="stable")
    by_token, rows_sorted, weights_sorted = tokens[order], rows[order], weights[order]
    out = []
    for query in queries:
        scores = np.zeros(len(offsets) - 1, np.float64)
        for token, w in zip(query["indices"], query["values"], strict=True):
            lo, hi = np.searchsorted(by_token, token), np.searchsorted(by_token, token, side="right")
            np.add.at(scores, rows_sorted[lo:hi], w * weights_sorted[lo:hi].astype(np.float64))
        hit = np.flatnonzero(scores > 0)
        best = hit[np.lexsort((ids[hit], -scores[hit]))][:k]
        out.append([(int(ids[i]), float(scores[i])) for i in best])
    return out


CORPORA = {"graded": (graded_corpus_vectors, graded_query_vectors), "clusters": (corpus_vectors, query_vectors)}
