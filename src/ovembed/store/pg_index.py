"""A space's dense index: HNSW over `dense::halfvec(D)` or over its binary quantization `bit(D)` (or the plain
`vector` index of stores from before 0.3, searched until replaced); builds sized to the table, concurrent while
others read and write it, their progress; and the ordering a search must use for the planner to pick the index.
A mixin of PostgresStore (it uses `_tx`, `_table`, `sessions` and `settings`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ovembed.config import StoreSettings
from ovembed.errors import ErrorKind
from ovembed.store.base import content_hash
from ovembed.store.pg_pool import ConnectionLost, reason
from ovembed.store.pg_sparse import create_impact_index

log = logging.getLogger(__name__)

LEGACY = "vector"  # the index of stores from before 0.3: HNSW on the float32 column itself (8 KB a vector)
SUFFIX = {"halfvec": "_halfvec", "binary": "_binary", LEGACY: "_hnsw"}
# An index's size per vector, measured at 1024 dims with m = 16 (PostgreSQL 18, pgvector 0.8): 2.67 KB on halfvec,
# 0.42 KB on bit. A build holds about that much graph in memory; the element part grows with the dimension, the
# links with m.
ELEMENT_BYTES = {"halfvec": 2.0, "binary": 1 / 8}
LINK_BYTES = {"halfvec": 683, "binary": 302}
MIN_BUILD_MB = 64
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class BuildProgress:
    """One look at a running CREATE INDEX (pg_stat_progress_create_index)."""

    index: str
    phase: str
    blocks_done: int
    blocks_total: int
    tuples_done: int
    tuples_total: int

    def describe(self) -> str:
        return (f"{self.index}: {self.phase} (blocks {self.blocks_done}/{self.blocks_total}, "
                f"tuples {self.tuples_done}/{self.tuples_total})")


@dataclass(frozen=True)
class BuildReport:
    """What the last build_index did: the index, over how many rows, with what memory (as the build's session
    reported it back) and workers, whether concurrently, how long it took."""

    kind: str
    rows: int
    maintenance_work_mem: str
    workers: int
    concurrently: bool
    seconds: float


def index_name(table: str, kind: str) -> str:
    return table + SUFFIX[kind]


def build_memory_mb(kind: str, rows: int, dimension: int, settings: StoreSettings) -> int:
    """maintenance_work_mem for building `kind` over `rows` vectors: the whole graph, so the build never falls back
    to inserting tuple by tuple on disk (many times slower), within settings.index_memory_max_mb."""
    per_vector = ELEMENT_BYTES[kind] * dimension + LINK_BYTES[kind] * settings.hnsw_m / 16
    wanted = math.ceil(rows * per_vector * 1.25 / 2**20)  # a quarter more: the build's own bookkeeping
    return max(MIN_BUILD_MB, min(settings.index_memory_max_mb, wanted))


def index_ddl(kind: str, table: str, dimension: int, settings: StoreSettings, concurrently: bool,
              name: str | None = None) -> sql.Composed:
    """CREATE INDEX for the dense column; the expression is the one `dense_search_sql` orders by."""
    expression = {"halfvec": "(dense::halfvec({d})) halfvec_cosine_ops",
                  "binary": "(binary_quantize(dense)::bit({d})) bit_hamming_ops"}[kind]
    return sql.SQL("CREATE INDEX {} IF NOT EXISTS {} ON {} USING hnsw ({}) WITH (m = {}, ef_construction = {})").format(
        sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""), sql.Identifier(name or index_name(table, kind)),
        sql.Identifier(table), sql.SQL(expression.format(d=int(dimension))), sql.Literal(settings.hnsw_m),
        sql.Literal(settings.hnsw_ef_construction))


def dense_search_sql(table: str, kind: str | None, dimension: int) -> sql.Composed:
    """The dense search: the index's `shortlist` nearest by its own distance, re-scored exactly on the float32
    column. Parameters: query, query, shortlist, k. The inner ORDER BY repeats the index's expression exactly, or
    the planner cannot use the index."""
    d = int(dimension)
    order = {
        "halfvec": f"dense::halfvec({d}) <=> %s::halfvec({d})",
        "binary": f"binary_quantize(dense)::bit({d}) <~> binary_quantize(%s::vector({d}))::bit({d})",
    }.get(kind, "dense <=> %s")
    return sql.SQL("SELECT chunk_id, 1 - (dense <=> %s) AS score FROM (SELECT chunk_id, dense FROM {} ORDER BY {} "
                   "LIMIT %s) c ORDER BY score DESC, chunk_id LIMIT %s").format(sql.Identifier(table), sql.SQL(order))


PGVECTOR_MAX_EF = 1000  # pgvector's cap on hnsw.ef_search


def hnsw_scan(db: psycopg.Connection, kind: str | None, settings: StoreSettings, k: int) -> int:
    """Set up this transaction's HNSW scan for k results; returns how many candidates to re-score exactly.

    The index orders by an approximation (half precision, or bits); its best `shortlist` are re-scored exactly on
    the float32 column. Halfvec distances are within ~1e-3 of exact: k more candidates catch the swaps at the cut;
    bits rank coarsely: rerank_factor candidates per result. HNSW returns at most ef_search candidates, so the beam
    is at least the shortlist (and 4 k: top-k stays exact on small tables). Past pgvector's cap of 1000 the scan
    goes on iteratively (pgvector >= 0.8, relaxed order) until it has read `beam` candidates, all re-scored: the
    only way past recall ~0.93 at 1M on question-like queries (docs/benchmarks.md: 0.97 at ~43 ms with 1500)."""
    shortlist = k * (settings.rerank_factor if kind == "binary" else 2)
    if kind is None:  # no index: an exact scan
        return shortlist
    beam = max(settings.hnsw_ef_search, 4 * k, shortlist)
    db.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(PGVECTOR_MAX_EF, beam)),))
    if beam <= PGVECTOR_MAX_EF:
        return shortlist
    # In the same statement as its guard: a pgvector older than 0.8 has no iterative scan (and reserves the prefix,
    # so setting it would fail); there the scan returns up to 1000, as before.
    db.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.max_scan_tuples', "
               "%s, true) WHERE current_setting('hnsw.iterative_scan', true) IS NOT NULL", (str(max(20_000, 10 * beam)),))
    return beam


# A space's valid dense-index names, as a column of a query over `spaces` (a search reads them with its definition,
# in one round trip).
VALID_INDEX_NAMES = ("ARRAY(SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE i.indrelid = to_regclass(quote_ident(table_name)) AND i.indisvalid)")


def index_kinds(table: str, names: list[str]) -> list[str]:
    """The dense index kinds among `table`'s index names (VALID_INDEX_NAMES' values); other indexes left out."""
    kinds = {index_name(table, kind): kind for kind in SUFFIX}
    return [kinds[name] for name in names if name in kinds]


def valid_indexes(db: psycopg.Connection, table: str) -> dict[str, bool]:
    """The dense indexes on `table` by kind, and whether each is valid (a crashed concurrent build leaves one
    invalid: never used by searches, kept up by writes)."""
    rows = db.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                      "WHERE i.indrelid = %s::regclass", (sql.Identifier(table).as_string(db),)).fetchall()
    return {kind: valid for name, valid in rows for kind in index_kinds(table, [name])}


def graph_options(db: psycopg.Connection, index: str) -> dict[str, int]:
    """The HNSW parameters an index was built with (its reloptions; pgvector's defaults where none was given)."""
    row = db.execute("SELECT reloptions FROM pg_class WHERE relname = %s", (index,)).fetchone()
    given = dict(option.split("=", 1) for option in (row[0] if row and row[0] else []))
    return {"m": int(given.get("m", 16)), "ef_construction": int(given.get("ef_construction", 64))}


class IndexBuilds:
    last_build: BuildReport | None = None

    def dense_index(self, space: str) -> str | None:
        """The index a dense search of `space` uses: 'halfvec', 'binary', 'vector' (a store from before 0.3) or
        None (an exact scan: a space indexed when it is activated)."""
        with self._tx() as db:
            table = self._table(db, space)[1].as_string(db).strip('"')
            return self._searched_index([kind for kind, ok in valid_indexes(db, table).items() if ok])

    def _searched_index(self, valid: list[str]) -> str | None:
        """The kind a search uses among a table's valid index kinds: the configured one first."""
        preference = [self.settings.pg_index, *(k for k in ("halfvec", "binary", LEGACY) if k != self.settings.pg_index)]
        return next((kind for kind in preference if kind in valid), None)

    def build_progress(self, space: str) -> BuildProgress | None:
        """The running index build on `space`'s table, as any session sees it; None when none runs."""
        with self._tx() as db:
            table = self._table(db, space)[1]
            row = db.execute(
                "SELECT coalesce(c.relname, ''), p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total "
                "FROM pg_stat_progress_create_index p LEFT JOIN pg_class c ON c.oid = p.index_relid "
                "WHERE p.relid = %s::regclass", (table.as_string(db),)).fetchone()
        return BuildProgress(*row) if row else None

    def build_index(self, space: str, progress: Callable[[BuildProgress], None] | None = None,
                    every_s: float = PROGRESS_EVERY_S) -> None:
        """Build the space's index of the configured kind (settings.pg_index; built again if its HNSW m or
        ef_construction differ from the settings), then drop its other dense indexes: the space is never without
        one. While it builds, `progress` (default: the log) gets a BuildProgress every `every_s` seconds."""
        report = progress or (lambda p: log.info("building %s", p.describe()))
        with futures.ThreadPoolExecutor(1, thread_name_prefix="ovembed-index") as builder:
            build = builder.submit(self._build, space)
            while True:
                try:
                    self.last_build = build.result(timeout=every_s)
                    return
                except futures.TimeoutError:  # still building (an alias of TimeoutError only from 3.11)
                    if (seen := self.build_progress(space)) is not None:
                        report(seen)

    def _wanted(self) -> dict[str, int]:
        return {"m": self.settings.hnsw_m, "ef_construction": self.settings.hnsw_ef_construction}

    @staticmethod
    def _drop(db: psycopg.Connection, name: str) -> None:
        db.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))

    def _rebuild(self, db: psycopg.Connection, kind: str, table: str, dimension: int, concurrently: bool) -> None:
        """The index built again with other HNSW parameters, beside the old one (searched until the swap), then
        swapped in by two renames in one transaction: searches never find the space without an index."""
        name = index_name(table, kind)
        self._drop(db, f"{name}_new")  # left by a rebuild that failed
        self._drop(db, f"{name}_old")
        db.execute(index_ddl(kind, table, dimension, self.settings, concurrently, name=f"{name}_new"))
        with db.transaction():
            db.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(f"{name}_old")))
            db.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(f"{name}_new"), sql.Identifier(name)))
        self._drop(db, f"{name}_old")

    def _build(self, space: str) -> BuildReport:
        started = time.perf_counter()
        with self._tx() as db:
            definition, table = self._table(db, space)
            table = table.as_string(db).strip('"')
            rows = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        kind = self.settings.pg_index
        memory = build_memory_mb(kind, rows, definition.dimension, self.settings)
        # Its own connection: CONCURRENTLY runs outside any transaction, and the session's build settings must not
        # reach a pooled connection.
        try:
            build = psycopg.connect(self.sessions.url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(ErrorKind.UNAVAILABLE, f"cannot connect to PostgreSQL at {self.where} to build "
                                 f"the index of space '{space}': {reason(exc)}") from None
        with build as db:
            # One builder at a time. Polled, not waited for in pg_advisory_lock: a waiting statement is an open
            # transaction, which the other builder's CREATE INDEX CONCURRENTLY waits for (a deadlock).
            key = int(content_hash(f"index:{table}")[:15], 16)
            while not db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                time.sleep(0.1)
            db.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{memory}MB")))
            db.execute(sql.SQL("SET max_parallel_maintenance_workers = {}").format(
                sql.Literal(self.settings.index_workers)))
            state = valid_indexes(db, table).get(kind)
            if state is False:  # left by a build that crashed: it never completes
                self._drop(db, index_name(table, kind))
            elif state and graph_options(db, index_name(table, kind)) != self._wanted():  # other HNSW settings
                self._rebuild(db, kind, table, definition.dimension, concurrently=rows > 0)
            # With rows, others read the space (searches) or write it (ingest fills every space): a plain build
            # would hold their writes back for its whole length.
            db.execute(index_ddl(kind, table, definition.dimension, self.settings, concurrently=rows > 0))
            if definition.sparse:  # the lexical search's postings by impact, deferred as the dense index is
                create_impact_index(db, table, concurrently=rows > 0)
            memory = db.execute("SHOW maintenance_work_mem").fetchone()[0]
            for other in valid_indexes(db, table).keys() - {kind}:
                self._drop(db, index_name(table, other))
        return BuildReport(kind, rows, memory, self.settings.index_workers, rows > 0,
                           round(time.perf_counter() - started, 3))
