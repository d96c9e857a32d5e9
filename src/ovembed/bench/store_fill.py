"""Filling a store bench's store, in a child process of its own: chunks, then dense (and sparse) vectors in bulk
beside an active space, then activation (where a backend builds its index); and the ground truth the search
child scores against, kept in a folder so that a search-only run can reuse the filled store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ovembed.bench.common import peak_mb, progress
from ovembed.bench.store_data import (
    CORPORA,
    exact_dense_top,
    exact_sparse_top,
    sparse_corpus,
    sparse_queries,
    sparse_row,
)
from ovembed.errors import validation

DOC_CHUNKS = 1000  # chunks per document when filling: bulk upserts, as an ingest of long documents makes
VECTOR_PAGE = 5000  # vectors per put_vectors call: 20 MB of float32 at 1024 dims, large enough to batch well
WARMUP_QUERIES = 5
SPACE = "synthetic"  # the space that is filled and searched
OTHER = "live"  # the space active before it (retained after): the target of the "writes to another space"
TRUTH, QUERIES = "truth.json", "queries.npy"  # in the target's folder: options, fill figures, exact top-k
say = progress("store-bench")


def backend(url: str) -> str:
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


def refuse_filled(store, url: str) -> None:
    if store.count_chunks():
        if backend(url) == "postgresql":
            from ovembed.store.postgres import redact

            url = redact(url)
        raise validation(f"{url} already holds chunks; give a fresh database")


def fill(store, space: str, vectors: np.ndarray, lexical: tuple | None, doc_prefix: str = "doc"
         ) -> tuple[np.ndarray, float, float]:
    """Chunks in documents of DOC_CHUNKS, then vectors (with lexical weights if given) in pages of VECTOR_PAGE.
    Returns (chunk ids by row, chunk seconds, vector seconds)."""
    from ovembed.store import ChunkInput, VectorRow

    n = len(vectors)
    started = time.perf_counter()
    ids: list[int] = []
    for start in range(0, n, DOC_CHUNKS):
        chunks = [ChunkInput(f"synthetic chunk {i}") for i in range(start, min(start + DOC_CHUNKS, n))]
        ids.extend(store.upsert_document(f"{doc_prefix}-{start // DOC_CHUNKS}", chunks))
    chunk_s = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, n, VECTOR_PAGE):
        # Rows hold views of `vectors`: no second copy of the corpus, only each page's encoding in the store.
        store.put_vectors(space, [VectorRow(ids[i], vectors[i], sparse_row(lexical, i) if lexical else None)
                                  for i in range(start, min(start + VECTOR_PAGE, n))])
        if start and start % (20 * VECTOR_PAGE) == 0:
            say(f"  {start} / {n} vectors written ({start / (time.perf_counter() - started):.0f}/s)")
    return np.asarray(ids, dtype=np.int64), chunk_s, time.perf_counter() - started


def options_key(plan: dict) -> dict:
    """What a kept store and its ground truth were made with: a reuse must ask for the same."""
    # A store kept before corpora had names holds the topic clusters.
    return {**{key: plan[key] for key in ("n", "dim", "seed", "sparse", "queries", "k")},
            "corpus": plan.get("corpus", "clusters")}


def fill_worker(plan: dict) -> dict:
    """One store in this process (`run_child`): fill, activate, then the ground truth into plan["folder"]."""
    from ovembed.store import Space, open_store

    url, label, n, dim, seed, sparse = (plan[key] for key in ("db", "label", "n", "dim", "seed", "sparse"))
    vectors = CORPORA[plan["corpus"]][0](n, dim, seed)  # the one copy of the corpus (4 GB at 1M x 1024)
    lexical = sparse_corpus(n, seed) if sparse else None
    with open_store(url) as store:
        refuse_filled(store, url)
        # As in a migration: the space is filled in bulk beside an active one, then activated (a backend that
        # defers its index builds it then, much faster than maintaining it row by row).
        store.create_space(Space(OTHER, "placeholder", "fp32", dim))
        store.create_space(Space(SPACE, "random-unit-vectors", "fp32", dim, sparse=sparse))
        say(f"{label}: filling {n} x {dim}{' with lexical weights' if sparse else ''} ...")
        ids, chunk_s, vector_s = fill(store, SPACE, vectors, lexical)
        say(f"{label}: activating (index build) ...")
        t0 = time.perf_counter()
        store.activate(SPACE)
        index_s = time.perf_counter() - t0
    figures = {"chunks_s": round(chunk_s, 2), "vectors_s": round(vector_s, 2), "index_s": round(index_s, 2),
               "fill_rows_per_s": round(n / (chunk_s + vector_s + index_s), 1),
               "vector_rows_per_s": round(n / vector_s, 1)}
    say(f"{label}: exact search for the ground truth ...")
    folder = Path(plan["folder"])
    truth = ground_truth(folder, plan, vectors, lexical, ids)
    figures["fill_peak_rss_mb"] = round(peak_mb())
    (folder / TRUTH).write_text(json.dumps({**truth, "options": options_key(plan), "fill": figures}))
    return figures


def ground_truth(folder: Path, plan: dict, vectors: np.ndarray, lexical: tuple | None, ids: np.ndarray) -> dict:
    """The queries (warm-up ones first; dense ones saved in `folder`) and each timed query's exact top-k."""
    count, k, seed = WARMUP_QUERIES + plan["queries"], plan["k"], plan["seed"]
    dense = CORPORA[plan["corpus"]][1](vectors, count, seed + 2)
    np.save(folder / QUERIES, dense)
    truth = {"dense": [sorted(top) for top in exact_dense_top(vectors, ids, dense[WARMUP_QUERIES:], k)]}
    if lexical is not None:
        queries = sparse_queries(lexical, count, seed + 3)
        truth["sparse_queries"] = queries
        truth["sparse"] = [[i for i, _ in top] for top in exact_sparse_top(lexical, ids, queries[WARMUP_QUERIES:], k)]
    return truth


def load_truth(folder: Path) -> tuple[dict, np.ndarray]:
    return json.loads((folder / TRUTH).read_text()), np.load(folder / QUERIES)
