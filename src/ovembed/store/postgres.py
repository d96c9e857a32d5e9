"""PostgreSQL + pgvector backend: one vectors table per space (its own dimension) with an HNSW index over its
half-precision or binary-quantized vectors (re-scored exactly from the float32 column) for dense search, and a
postings table per sparse space for lexical search. Connections come from a pool (pg_pool.py).

Live writes: every chunk insert takes a shared advisory lock (INGEST_LOCK) for its transaction. Creating a space
waits for the inserts in flight (seen in pg_locks) without holding new ones back; activating takes the lock
exclusively for the catch-up and the switch. Spaces' tables carry no foreign key to `chunks`, so creating or
dropping one never waits behind, or holds back, ingestion; chunk deletes remove their vectors explicitly. DDL
and the switch run with a short `lock_timeout` and are retried."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ovembed.config import StoreSettings
from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError
from ovembed.store.base import Chunk, ChunkInput, Hit, Space, SpaceStatus, Store, VectorRow, content_hash, store_error
from ovembed.store.pg_index import (
    VALID_INDEX_NAMES,
    IndexBuilds,
    dense_search_sql,
    hnsw_scan,
    index_ddl,
    index_kinds,
)
from ovembed.store.pg_live import INGEST_LOCK, LiveWrites
from ovembed.store.pg_pool import ConnectionLost, Sessions, reason
from ovembed.store.pg_sparse import (
    SPARSE_DIM,
    create_postings,
    delete_postings,
    postings_table,
    search_postings,
    to_sparsevec,
)
from ovembed.store.pg_write import copy_vectors, prepare_session
from ovembed.store.schema import POSTGRES_MIGRATIONS as MIGRATIONS

HNSW_MAX_DIM = 2000  # pgvector's HNSW index takes `vector` columns up to this many dimensions (halfvec 4000, bit 64000)
MIGRATION_LOCK = 0x6F76656D  # advisory lock key: two processes opening a fresh database migrate one at a time


CHUNK_COLUMNS = "c.id, c.doc_id, c.seq, c.text, c.content_hash, c.metadata"
SPACE_COLUMNS = "name, model_id, precision, dimension, model_ref, sparse, fingerprint"


__all__ = ["ConnectionLost", "PostgresStore", "redact", "to_sparsevec"]


class PostgresStore(IndexBuilds, LiveWrites, Store):
    def __init__(self, url: str, settings: StoreSettings | None = None):
        self.settings = settings = settings or StoreSettings()
        self.where = where = redact(url)
        try:
            # A connection of its own: a clear error when the server cannot be reached, and pgvector is there
            # before the pool's connections register its types.
            with psycopg.connect(url, connect_timeout=5) as db:
                self._migrate(db, where)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(ErrorKind.UNAVAILABLE, f"cannot connect to PostgreSQL at {where}: {reason(exc)}") \
                from None
        self.sessions = Sessions(url, where, self.settings, configure=prepare_session)
        self._tx = self.sessions.transaction

    @property
    def conn(self) -> psycopg.Connection:
        """This thread's own connection until the store closes: store calls made by this thread inside
        `with store.conn.transaction():` join that transaction."""
        return self.sessions.connection()

    def _session(self) -> AbstractContextManager[psycopg.Connection]:
        return self.sessions.session()

    @staticmethod
    def _migrate(db: psycopg.Connection, where: str) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            try:
                with db.transaction():  # a savepoint, so the failure can be reported instead of aborting
                    db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise OvembedError(
                    ErrorKind.UNAVAILABLE,
                    f"PostgreSQL at {where} lacks the pgvector extension ('vector'), and it could not be created: "
                    f"{' '.join(str(exc).split())}; install pgvector on the server or have an admin run "
                    "CREATE EXTENSION vector in this database",
                ) from None
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            for step in MIGRATIONS[version:]:
                db.execute(step)
            for name, table in db.execute("SELECT name, table_name FROM spaces WHERE NOT seeded").fetchall():
                db.execute(sql.SQL(  # under the migration lock, before this version's inserts write pending rows
                    "INSERT INTO pending SELECT %s, c.id FROM chunks c WHERE NOT EXISTS "
                    "(SELECT 1 FROM {} v WHERE v.chunk_id = c.id) ON CONFLICT DO NOTHING").format(sql.Identifier(table)),
                    (name,))
                db.execute("UPDATE spaces SET seeded = true WHERE name = %s", (name,))
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (%s)", (max(version, len(MIGRATIONS)),))

    # --- documents and chunks ----------------------------------------------------------------------
    def upsert_document(self, doc_id: str, chunks: list[ChunkInput], metadata: dict | None = None) -> list[int]:
        with self._tx() as db:
            # Shared with other inserts; a space being created waits for this transaction, an activation holds
            # it back for its switch.
            db.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", INGEST_LOCK)
            db.execute(
                "INSERT INTO documents VALUES (%s, %s, now()) "
                "ON CONFLICT (id) DO UPDATE SET metadata = excluded.metadata, updated_at = excluded.updated_at",
                (doc_id, Jsonb(metadata or {})),
            )
            self._delete_chunks(db, doc_id)
            rows = db.execute(
                "INSERT INTO chunks (doc_id, seq, text, content_hash, metadata) "
                "SELECT %s, q.seq - 1, q.text, q.hash, q.metadata "
                "FROM unnest(%s::text[], %s::text[], %s::jsonb[]) WITH ORDINALITY AS q(text, hash, metadata, seq) "
                "ORDER BY q.seq RETURNING id, seq",
                (doc_id, [c.text for c in chunks], [content_hash(c.text) for c in chunks],
                 [Jsonb(c.metadata) for c in chunks]),
            ).fetchall()
            # Every space waits for these chunks: the ingest fills its own, reembed or activation the others.
            db.execute("INSERT INTO pending SELECT s.name, c.id FROM spaces s CROSS JOIN unnest(%s::bigint[]) AS c(id)",
                       ([r[0] for r in rows],))
        return [chunk_id for chunk_id, _ in sorted(rows, key=lambda r: r[1])]  # RETURNING promises no order

    def delete_document(self, doc_id: str) -> None:
        with self._tx() as db:
            self._delete_chunks(db, doc_id)
            db.execute("DELETE FROM documents WHERE id = %s", (doc_id,))

    @staticmethod
    def _delete_chunks(db: psycopg.Connection, doc_id: str) -> None:
        """Delete a document's chunks and their vectors in every space (pending rows cascade). The spaces are read
        after the chunk rows are locked, so a space created meanwhile is seen, and a vector write waiting on
        those rows finds them gone."""
        ids = [i for (i,) in db.execute("DELETE FROM chunks WHERE doc_id = %s RETURNING id", (doc_id,))]
        if ids:
            for table, sparse in db.execute("SELECT table_name, sparse FROM spaces").fetchall():
                db.execute(sql.SQL("DELETE FROM {} WHERE chunk_id = ANY(%s::bigint[])").format(sql.Identifier(table)),
                           (ids,))
                if sparse:
                    delete_postings(db, table, ids)

    def get_chunks(self, chunk_ids: list[int]) -> list[Chunk]:
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {CHUNK_COLUMNS} FROM unnest(%s::bigint[]) WITH ORDINALITY AS q(id, n) "
                "JOIN chunks c ON c.id = q.id ORDER BY q.n",
                (list(chunk_ids),),
            ).fetchall()
        return [Chunk(*row) for row in rows]

    def chunks_after(self, after_id: int, limit: int, missing_in: str | None = None) -> list[Chunk]:
        with self._tx() as db:
            missing = sql.SQL("")
            if missing_in is not None:
                missing = sql.SQL("AND NOT EXISTS (SELECT 1 FROM {} v WHERE v.chunk_id = c.id)").format(
                    self._table(db, missing_in)[1])
            query = sql.SQL("SELECT {} FROM chunks c WHERE c.id > %s {} ORDER BY c.id LIMIT %s").format(
                sql.SQL(CHUNK_COLUMNS), missing)
            rows = db.execute(query, (after_id, limit)).fetchall()
        return [Chunk(*row) for row in rows]

    def count_chunks(self) -> int:
        with self._tx() as db:
            return db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def pending_chunks(self, space: str, after_id: int, limit: int) -> list[Chunk]:
        with self._tx() as db:
            return self._pending(db, space, after_id, limit)

    @staticmethod
    def _pending(db: psycopg.Connection, space: str, after_id: int, limit: int | None) -> list[Chunk]:
        rows = db.execute(f"SELECT {CHUNK_COLUMNS} FROM pending p JOIN chunks c ON c.id = p.chunk_id "
                          "WHERE p.space = %s AND p.chunk_id > %s ORDER BY p.chunk_id LIMIT %s",
                          (space, after_id, limit)).fetchall()
        return [Chunk(*row) for row in rows]

    def pending_ids(self, space: str, after_id: int, limit: int) -> list[int]:
        with self._tx() as db:
            return [i for (i,) in db.execute("SELECT chunk_id FROM pending WHERE space = %s AND chunk_id > %s "
                                             "ORDER BY chunk_id LIMIT %s", (space, after_id, limit))]

    def has_pending(self, space: str) -> bool:
        with self._tx() as db:
            return db.execute("SELECT EXISTS (SELECT 1 FROM pending WHERE space = %s)", (space,)).fetchone()[0]

    # --- spaces ------------------------------------------------------------------------------------
    def create_space(self, space: Space) -> Space:
        if not 0 < space.dimension <= HNSW_MAX_DIM:
            raise store_error(f"space '{space.name}': dimension {space.dimension} is outside 1..{HNSW_MAX_DIM}, "
                              "the range pgvector's HNSW index takes")
        made, seeded = self._retrying(lambda db: self._insert_space(db, space), f"create space '{space.name}'")
        if not seeded:  # the chunks there now wait for it too (a crash before this: the next call does it)
            self.sweep(space.name)
        return made

    def _insert_space(self, db: psycopg.Connection, space: Space) -> tuple[Space, bool]:
        row = db.execute(
            f"INSERT INTO spaces ({SPACE_COLUMNS}, active, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, NOT EXISTS (SELECT 1 FROM spaces WHERE active), "
            "CASE WHEN EXISTS (SELECT 1 FROM spaces WHERE active) THEN 'filling' ELSE 'active' END) "
            "ON CONFLICT (name) DO NOTHING RETURNING table_name, active",
            (space.name, space.model_id, space.precision, space.dimension, space.model_ref, space.sparse,
             space.fingerprint),
        ).fetchone()
        if row is None:
            found = db.execute(f"SELECT {SPACE_COLUMNS}, seeded FROM spaces WHERE name = %s FOR NO KEY UPDATE",
                               (space.name,)).fetchone()
            existing = Space(*found[:7])
            self._check_same_model(existing, space)
            if not existing.fingerprint and space.fingerprint:
                db.execute("UPDATE spaces SET fingerprint = %s WHERE name = %s", (space.fingerprint, space.name))
                existing = replace(existing, fingerprint=space.fingerprint)
            return existing, found[7]
        table = sql.Identifier(row[0])
        # The sparse column is typed whatever the space: it stays NULL when lexical weights are not kept. No
        # foreign key to chunks: one would make this statement wait for every open ingest transaction.
        db.execute(sql.SQL(
            "CREATE TABLE {} (chunk_id bigint PRIMARY KEY, dense vector({}) NOT NULL, sparse sparsevec({}))"
        ).format(table, sql.Literal(space.dimension), sql.Literal(SPARSE_DIM)))
        if row[1]:
            # The first space is searched at once and fills row by row: index it now. Any later space is
            # filled in bulk by reembed and indexed when activated: pgvector builds an HNSW index over
            # loaded rows many times faster than it maintains one through inserts.
            db.execute(index_ddl(self.settings.pg_index, row[0], space.dimension, self.settings, concurrently=False))
        if space.sparse:
            # Not pgvector's HNSW on `sparse`: it takes at most 1000 non-zeros per row, and a graph search by inner
            # product over sparse rows misses matches that an impact-ordered read of postings finds.
            create_postings(db, row[0], impact=row[1])  # as the dense index: now for the first space only
        return space, False

    def space_definitions(self) -> list[Space]:
        with self._tx() as db:
            return [Space(*r) for r in db.execute(f"SELECT {SPACE_COLUMNS} FROM spaces ORDER BY created_at, name")]

    def spaces(self) -> list[SpaceStatus]:
        with self._tx() as db:
            chunks = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            rows = db.execute(
                f"SELECT {SPACE_COLUMNS}, active, table_name, state, seeded, "
                "(SELECT count(*) FROM pending p WHERE p.space = s.name) FROM spaces s ORDER BY created_at, name"
            ).fetchall()
            return [SpaceStatus(Space(*r[:7]), r[7], self._count(db, r[8]), chunks, pending=r[11], state=r[9],
                                seeded=r[10]) for r in rows]

    def active_space(self) -> Space | None:
        with self._tx() as db:  # no vector counts: this is on every search's path
            row = db.execute(f"SELECT {SPACE_COLUMNS} FROM spaces WHERE active").fetchone()
        return Space(*row) if row else None

    def _switch(self, name, force, compute) -> None:
        def switch(db: psycopg.Connection) -> None:
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", INGEST_LOCK)  # no chunk insert in flight or starting
            definition, table = self._table(db, name, lock="NO KEY UPDATE")
            if chunks := self._pending(db, name, 0, None):
                if compute is not None:
                    self._write(db, definition, table, compute(chunks))
                elif not force:
                    raise self._incomplete(name, len(chunks))
            # Off first, then on: the partial unique index allows one active row after every statement.
            db.execute("UPDATE spaces SET active = false, state = 'retained' WHERE active AND name <> %s", (name,))
            db.execute("UPDATE spaces SET active = true, state = 'active' WHERE name = %s", (name,))

        self._retrying(switch, f"activate space '{name}'")

    def drop_space(self, name: str) -> None:
        def drop(db: psycopg.Connection) -> None:
            _, table = self._table(db, name, lock="UPDATE")
            if db.execute("SELECT active FROM spaces WHERE name = %s", (name,)).fetchone()[0]:
                raise store_error(f"space '{name}' is the active one: activate another space before dropping it")
            db.execute(sql.SQL("DROP TABLE {}").format(table))
            db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(postings_table(table.as_string(db).strip('"'))))
            db.execute("DELETE FROM spaces WHERE name = %s", (name,))
            # Pending rows an insert in flight writes for this space after this are harmless: a space made again
            # under this name lacks those chunks' vectors anyway.
            db.execute("DELETE FROM pending WHERE space = %s", (name,))

        self._retrying(drop, f"drop space '{name}'")

    # --- vectors -----------------------------------------------------------------------------------
    def put_vectors(self, space: str, rows: list[VectorRow]) -> int:
        with self._tx() as db:
            definition, table = self._table(db, space)
            return self._write(db, definition, table, rows)

    def _write(self, db: psycopg.Connection, definition: Space, table: sql.Identifier, rows: list[VectorRow]) -> int:
        """Upsert vectors and clear their pending rows, inside the caller's transaction."""
        self._check_rows(definition, rows)
        # KEY SHARE keeps the chunks from being deleted between this check and the insert.
        live = {i for (i,) in db.execute("SELECT id FROM chunks WHERE id = ANY(%s::bigint[]) FOR KEY SHARE",
                                         ([r.chunk_id for r in rows],))}
        written = [r for r in rows if r.chunk_id in live]
        if written:
            copy_vectors(db, table.as_string(db).strip('"'), definition.sparse, written)
        db.execute("DELETE FROM pending WHERE space = %s AND chunk_id = ANY(%s::bigint[])",
                   (definition.name, [r.chunk_id for r in rows]))
        return len(written)

    def count_vectors(self, space: str) -> int:
        with self._tx() as db:
            return self._count(db, self._table(db, space)[1])

    def get_dense(self, space: str, chunk_ids: list[int]) -> dict[int, np.ndarray]:
        with self._tx() as db:
            rows = db.execute(sql.SQL("SELECT chunk_id, dense FROM {} WHERE chunk_id = ANY(%s::bigint[])").format(
                self._table(db, space)[1]), (list(chunk_ids),)).fetchall()
        return {chunk_id: dense.to_numpy().astype(np.float32) for chunk_id, dense in rows}

    def search_dense(self, space: str, query: np.ndarray, k: int) -> list[Hit]:
        with self._tx() as db:
            definition, name, valid = self._space_row(db, space, VALID_INDEX_NAMES)
            query = np.asarray(query, np.float32)
            if query.shape != (definition.dimension,):
                raise store_error(f"space '{space}' holds {definition.dimension}-dim vectors, "
                                  f"got a query of shape {query.shape}")
            if k <= 0:
                return []
            index = self._searched_index(index_kinds(name, valid))
            shortlist = hnsw_scan(db, index, self.settings, k)
            rows = db.execute(dense_search_sql(name, index, definition.dimension),
                              (query, query, shortlist, k)).fetchall()
        return [Hit(chunk_id, float(score)) for chunk_id, score in rows]

    def search_sparse(self, space: str, query: SparseVector, k: int) -> list[Hit]:
        vector = to_sparsevec(query)  # checked before the space: bad weights are the caller's error whatever the space
        if not query["indices"] or k <= 0:
            return []
        with self._tx() as db:
            definition, table = self._table(db, space)
            if not definition.sparse:
                return []  # no lexical weights kept
            return search_postings(db, table.as_string(db).strip('"'), query, vector, k, self.settings.sparse_page,
                                   self.settings.sparse_max_rows, self.settings.sparse_shortlist)

    def close(self) -> None:
        self.sessions.close()

    # --- helpers -----------------------------------------------------------------------------------
    @classmethod
    def _table(cls, db: psycopg.Connection, name: str, lock: str = "") -> tuple[Space, sql.Identifier]:
        """A space's definition and its vectors table; locked (FOR `lock`) when the caller changes the space."""
        definition, table = cls._space_row(db, name, lock=lock)
        return definition, sql.Identifier(table)

    @staticmethod
    def _space_row(db: psycopg.Connection, name: str, *extra: str, lock: str = "") -> tuple:
        """(definition, table name, *the `extra` columns' values) of a space, in one statement."""
        columns = ", ".join((SPACE_COLUMNS, "table_name", *extra))
        row = db.execute(f"SELECT {columns} FROM spaces WHERE name = %s" + (f" FOR {lock}" if lock else ""),
                         (name,)).fetchone()
        if row is None:
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{name}'")
        return Space(*row[:7]), *row[7:]

    @staticmethod
    def _count(db: psycopg.Connection, table: str | sql.Identifier) -> int:
        table = table if isinstance(table, sql.Identifier) else sql.Identifier(table)
        return db.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]


def redact(url: str) -> str:
    """The URL without its password (in the user part or as a `password=` parameter)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}{at}{hostport}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
