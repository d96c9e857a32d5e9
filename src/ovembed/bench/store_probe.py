"""Searching a filled store in a child process that holds nothing else: no copy of the corpus, only the
queries and their exact top-k (store_fill's folder). So its RSS is the store's, and its first answer is a cold
start: from `open_store` to the first hits. Then the warm latencies and recall, dense and sparse, and what
a write costs the next query: to another space (nothing to reload) and to the searched one (a refresh)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ovembed.bench.common import peak_mb, proc_status, rss_mb, server_pss_mb
from ovembed.bench.store_data import sparse_corpus, sparse_row, unit_vectors
from ovembed.bench.store_fill import OTHER, SPACE, WARMUP_QUERIES, load_truth, say

OTHER_ROWS = 1000  # vectors written to the other space, as an ingest or a reembed page would
FRESH_CHUNKS = 100  # chunks of a new document written with their vectors into the searched space
AFTER_QUERIES = 10  # queries timed after each write, the first of them reported apart


def ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def timed(search: Callable[[object], list], queries: list, exact: list[list[int]]) -> dict:
    """Latency percentiles of `search` over `queries`, and recall against the exact top-k of each with its standard
    error (over 100 queries ~0.01-0.04, the higher the recall the lower: two runs 0.02 apart may differ by chance)."""
    times, recalls = [], []
    for query, best in zip(queries, exact, strict=True):
        t0 = time.perf_counter()
        hits = search(query)
        times.append((time.perf_counter() - t0) * 1000)
        recalls.append(len({h.chunk_id for h in hits} & set(best)) / max(1, len(best)))
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "recall": round(float(np.mean(recalls)), 4),
            "recall_se": round(float(np.std(recalls, ddof=1) / np.sqrt(len(recalls))) if len(recalls) > 1 else 0.0, 4)}


def probe_worker(plan: dict) -> dict:
    """`run_child` target: open, first answer, warm queries, memory, then the writes."""
    from ovembed.store import open_store

    truth, dense = load_truth(Path(plan["folder"]))
    url, k = plan["db"], plan["k"]
    figures: dict[str, object] = {"rss_before_open_mb": round(rss_mb())}  # the interpreter and its imports
    t0 = time.perf_counter()
    with open_store(url, create=False) as store:
        figures["open_ms"] = ms(t0)
        store.search_dense(SPACE, dense[0], k)
        figures["cold_ms"] = ms(t0)
        figures["rss_first_mb"] = round(rss_mb())
        for query in dense[1:WARMUP_QUERIES]:
            store.search_dense(SPACE, query, k)
        say(f"{plan['label']}: {plan['queries']} dense queries ...")
        figures["dense_search"] = timed(lambda q: store.search_dense(SPACE, q, k), list(dense[WARMUP_QUERIES:]),
                                        truth["dense"])
        if "sparse" in truth:
            figures["sparse_search"] = _sparse(store, truth, plan)
        status = proc_status()
        figures.update(rss_mb=round(rss_mb()), anon_mb=round(status.get("RssAnon", 0)),
                       peak_rss_mb=round(peak_mb()))
        if plan["server_pid"]:
            figures["server_pss_mb"] = round(server_pss_mb(plan["server_pid"]))
        say(f"{plan['label']}: queries after writes to another space and to this one ...")
        figures["writes"] = _after_writes(store, url, plan, dense[WARMUP_QUERIES:])
    figures["peak_rss_end_mb"] = round(peak_mb())  # with whatever the writes made the searcher reload
    return figures


def _sparse(store, truth: dict, plan: dict) -> dict:
    queries, k = truth["sparse_queries"], plan["k"]
    say(f"{plan['label']}: {plan['queries']} sparse queries ...")
    t0 = time.perf_counter()
    store.search_sparse(SPACE, queries[0], k)
    cold = ms(t0)
    for query in queries[1:WARMUP_QUERIES]:
        store.search_sparse(SPACE, query, k)
    return {"cold_ms": cold, **timed(lambda q: store.search_sparse(SPACE, q, k), queries[WARMUP_QUERIES:],
                                     truth["sparse"])}


def _after(store, queries: np.ndarray, start: int, k: int) -> dict:
    """The first query after a write, then the p50 of the next ones (timed queries from `start` on, wrapping)."""
    times = []
    for query in queries[np.arange(start, start + AFTER_QUERIES) % len(queries)]:
        t0 = time.perf_counter()
        store.search_dense(SPACE, query, k)
        times.append((time.perf_counter() - t0) * 1000)
    return {"first_ms": round(times[0], 2), "p50_ms": round(float(np.median(times[1:])), 3)}


def _after_writes(store, url: str, plan: dict, queries: np.ndarray) -> dict:
    """Writes through a second connection, as another process's ingest or reembed makes them, each followed by
    queries on the searcher's connection. The fresh document is deleted at the end: the store stays as filled
    (a kept store is searched again by a later --reuse run)."""
    from ovembed.store import ChunkInput, VectorRow, open_store

    dim, k, seed, sparse = plan["dim"], plan["k"], plan["seed"], plan["sparse"]
    writer = open_store(url, create=False)
    try:
        ids = [c.id for c in writer.chunks_after(0, OTHER_ROWS)]
        other = unit_vectors(len(ids), dim, seed + 7)
        t0 = time.perf_counter()
        writer.put_vectors(OTHER, [VectorRow(i, other[row]) for row, i in enumerate(ids)])
        out = {"other_rows": len(ids), "other_write_ms": ms(t0), "other": _after(store, queries, 0, k)}
        fresh = unit_vectors(FRESH_CHUNKS, dim, seed + 8)
        lexical = sparse_corpus(FRESH_CHUNKS, seed + 8) if sparse else None
        t0 = time.perf_counter()
        new = writer.upsert_document("store-bench-fresh", [ChunkInput(f"fresh chunk {i}") for i in range(FRESH_CHUNKS)])
        writer.put_vectors(SPACE, [VectorRow(i, fresh[row], sparse_row(lexical, row) if lexical else None)
                                   for row, i in enumerate(new)])
        out.update(same_rows=len(new), same_write_ms=ms(t0), same=_after(store, queries, AFTER_QUERIES, k))
        # Each fresh vector searched for itself: a refresh that missed the write would not find it.
        found = [new[row] in {h.chunk_id for h in store.search_dense(SPACE, fresh[row], k)}
                 for row in range(AFTER_QUERIES)]
        out["fresh_found"] = round(sum(found) / len(found), 2)
        writer.delete_document("store-bench-fresh")
    finally:
        writer.close()
    return out
