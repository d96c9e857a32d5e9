"""SQLite backend: one file, WAL mode; vectors as float32 blobs, searched exactly or, past ~20k per space, through
an HNSW index file per space (sqlite_ann); lexical weights in postings read by impact (sqlite_sparse). One writer
at a time (BEGIN IMMEDIATE): a chunk insert, its pending rows and a space's creation or activation never interleave."""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ovembed.config import StoreSettings
from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError
from ovembed.store.base import (
    ACTIVE,
    FILLING,
    RETAINED,
    Chunk,
    ChunkInput,
    Hit,
    Space,
    SpaceStatus,
    Store,
    VectorRow,
    content_hash,
    store_error,
)
from ovembed.store.schema import SQLITE_MIGRATIONS as MIGRATIONS
from ovembed.store.schema import apply_sqlite_step
from ovembed.store.sqlite_ann import DenseIndex, remove_files, space_key
from ovembed.store.sqlite_sparse import create_impact_index, drop_impact_index, search_sparse

log = logging.getLogger("ovembed.store")
SPACE_COLUMNS = "name, model_id, precision, dimension, model_ref, sparse, fingerprint"


class SQLiteStore(Store):
    def __init__(self, path: str | Path, settings: StoreSettings | None = None):
        self.settings = settings or StoreSettings()
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
            self._migrate()  # foreign keys off: a step may rebuild a table others refer to
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise OvembedError(ErrorKind.UNAVAILABLE, f"cannot open SQLite database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._dense: dict[str, DenseIndex] = {}
        self._warned = False
        self._own_writes = 0

    @contextmanager
    def _tx(self):
        """One write transaction, taken up front (IMMEDIATE) so concurrent writers queue, not deadlock."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            self._own_writes += 1

    def _migrate(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self.conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            for step in MIGRATIONS[version:]:
                apply_sqlite_step(self.conn, step)
            if row is None:
                self.conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            else:
                self.conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # --- documents and chunks ----------------------------------------------------------------------
    def upsert_document(self, doc_id: str, chunks: list[ChunkInput], metadata: dict | None = None) -> list[int]:
        with self._tx() as db:
            db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            db.execute("INSERT INTO documents VALUES (?, ?, ?)", (doc_id, json.dumps(metadata or {}), time.time()))
            ids = []
            for seq, chunk in enumerate(chunks):
                cur = db.execute(
                    "INSERT INTO chunks (doc_id, seq, text, content_hash, metadata) VALUES (?, ?, ?, ?, ?)",
                    (doc_id, seq, chunk.text, content_hash(chunk.text), json.dumps(chunk.metadata)),
                )
                ids.append(cur.lastrowid)
            # Every space waits for these chunks: the ingest fills its own, reembed or activation the others.
            db.execute("INSERT INTO pending SELECT s.name, c.id FROM spaces s JOIN chunks c ON c.doc_id = ?", (doc_id,))
        if ids and ids[-1] > self.settings.sqlite_tested_chunks and not self._warned:
            self._warn_past_tested_size()  # ids only grow: counting is needed only once they pass the bound
        return ids

    def _warn_past_tested_size(self) -> None:
        chunks = self.count_chunks()
        if chunks > self.settings.sqlite_tested_chunks:
            self._warned = True
            log.warning("%s holds %d chunks, more than SQLite is tested with (%d): search latency and memory grow "
                        "past the figures in docs/benchmarks.md; move to PostgreSQL + pgvector (ovembed ingest --db "
                        "postgresql://..., see docs/scaling.md)", self.path, chunks, self.settings.sqlite_tested_chunks)

    def delete_document(self, doc_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    def get_chunks(self, chunk_ids: list[int]) -> list[Chunk]:
        found: dict[int, Chunk] = {}
        with self._lock:
            for part in _parts(chunk_ids):
                marks = ",".join("?" * len(part))
                for row in self.conn.execute(f"SELECT * FROM chunks WHERE id IN ({marks})", part):
                    found[row[0]] = _chunk(row)
        return [found[i] for i in chunk_ids if i in found]

    def chunks_after(self, after_id: int, limit: int, missing_in: str | None = None) -> list[Chunk]:
        with self._lock:
            if missing_in is None:
                rows = self.conn.execute("SELECT * FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
            else:
                rows = self.conn.execute(
                    "SELECT c.* FROM chunks c WHERE c.id > ? AND NOT EXISTS "
                    "(SELECT 1 FROM vectors v WHERE v.space = ? AND v.chunk_id = c.id) ORDER BY c.id LIMIT ?",
                    (after_id, missing_in, limit),
                )
            return [_chunk(r) for r in rows.fetchall()]

    def pending_chunks(self, space: str, after_id: int, limit: int) -> list[Chunk]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT c.* FROM pending p JOIN chunks c ON c.id = p.chunk_id WHERE p.space = ? AND p.chunk_id > ? "
                "ORDER BY p.chunk_id LIMIT ?", (space, after_id, limit)).fetchall()
        return [_chunk(r) for r in rows]

    def pending_ids(self, space: str, after_id: int, limit: int) -> list[int]:
        with self._lock:
            rows = self.conn.execute("SELECT chunk_id FROM pending WHERE space = ? AND chunk_id > ? ORDER BY chunk_id "
                                     "LIMIT ?", (space, after_id, limit)).fetchall()
        return [i for (i,) in rows]

    def has_pending(self, space: str) -> bool:
        with self._lock:
            return bool(self.conn.execute("SELECT EXISTS (SELECT 1 FROM pending WHERE space = ?)", (space,)).fetchone()[0])

    def sweep(self, space: str) -> int:
        with self._tx() as db:  # the one writer: no chunk insert is in flight
            self._definition(space)
            return self._seed(db, space)

    @staticmethod
    def _seed(db: sqlite3.Connection, space: str) -> int:
        return db.execute(
            "INSERT OR IGNORE INTO pending SELECT ?, c.id FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM vectors v WHERE v.space = ? AND v.chunk_id = c.id)", (space, space)).rowcount

    @contextmanager
    def reembed_lease(self, space: str):
        lock_path = self.path.with_name(f"{self.path.name}.{content_hash('reembed:' + space)[:16]}.lock")
        with open(lock_path, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OvembedError(ErrorKind.BUSY, f"another reembed job is filling space '{space}' of {self.path}; "
                                   "this one stops without doing anything (wait for that one, or stop it: a "
                                   "rerun resumes)") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def count_chunks(self) -> int:
        with self._lock:
            return self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    # --- spaces ------------------------------------------------------------------------------------
    def create_space(self, space: Space) -> Space:
        with self._tx() as db:
            row = db.execute(f"SELECT {SPACE_COLUMNS} FROM spaces WHERE name = ?", (space.name,)).fetchone()
            if row is not None:
                existing = _space(row)
                self._check_same_model(existing, space)
                if not existing.fingerprint and space.fingerprint:
                    db.execute("UPDATE spaces SET fingerprint = ? WHERE name = ?", (space.fingerprint, space.name))
                    existing = _space((*row[:6], space.fingerprint))
                return existing
            first = db.execute("SELECT NOT EXISTS (SELECT 1 FROM spaces)").fetchone()[0] == 1
            db.execute(f"INSERT INTO spaces ({SPACE_COLUMNS}, active, state, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (space.name, space.model_id, space.precision, space.dimension, space.model_ref,
                        int(space.sparse), space.fingerprint, int(first), ACTIVE if first else FILLING, time.time()))
            self._seed(db, space.name)  # every chunk there now waits for this space, in the same transaction
            if first and space.sparse:  # searched at once, filled as ingested; a later space is built when activated
                create_impact_index(db, space.name)
            return space

    def space_definitions(self) -> list[Space]:
        with self._lock:
            rows = self.conn.execute(f"SELECT {SPACE_COLUMNS} FROM spaces ORDER BY created_at, name").fetchall()
        return [_space(r) for r in rows]

    def spaces(self) -> list[SpaceStatus]:
        with self._lock:
            chunks = self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            rows = self.conn.execute(
                "SELECT s.name, s.model_id, s.precision, s.dimension, s.model_ref, s.sparse, s.fingerprint, s.active, "
                "(SELECT COUNT(*) FROM vectors v WHERE v.space = s.name), "
                "(SELECT COUNT(*) FROM pending p WHERE p.space = s.name), s.state FROM spaces s "
                "ORDER BY s.created_at, s.name"
            ).fetchall()
        return [SpaceStatus(_space(r[:7]), bool(r[7]), r[8], chunks, pending=r[9], state=r[10]) for r in rows]

    def active_space(self) -> Space | None:
        with self._lock:  # no vector counts: this is on every search's path
            row = self.conn.execute(f"SELECT {SPACE_COLUMNS} FROM spaces WHERE active = 1").fetchone()
        return _space(row) if row else None

    def _definition(self, name: str) -> Space:
        """A space's definition without counting its vectors (cheap: for every search and write)."""
        with self._lock:
            row = self.conn.execute(f"SELECT {SPACE_COLUMNS} FROM spaces WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{name}'")
        return _space(row)

    def _switch(self, name, force, compute) -> None:
        with self._tx() as db:  # the one writer: no chunk insert lands between the catch-up and the switch
            definition = self._definition(name)
            if chunks := self.pending_chunks(name, 0, 1 << 62):
                if compute is not None:
                    rows = compute(chunks)
                    self._check_rows(definition, rows)
                    self._write(db, definition, rows)
                elif not force:
                    raise self._incomplete(name, len(chunks))
            db.execute("UPDATE spaces SET active = 0, state = ? WHERE active = 1 AND name <> ?", (RETAINED, name))
            db.execute("UPDATE spaces SET active = 1, state = ? WHERE name = ?", (ACTIVE, name))

    def drop_space(self, name: str) -> None:
        with self._tx() as db:  # the check and the delete in one transaction: an activation cannot slip between
            row = db.execute("SELECT active FROM spaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{name}'")
            if row[0]:
                raise store_error(f"space '{name}' is the active one: activate another space before dropping it")
            db.execute("DELETE FROM postings WHERE space = ?", (name,))
            drop_impact_index(db, name)
            db.execute("DELETE FROM vectors WHERE space = ?", (name,))
            key = db.execute("SELECT created_at FROM spaces WHERE name = ?", (name,)).fetchone()[0]
            db.execute("DELETE FROM spaces WHERE name = ?", (name,))
        self._dense.pop(name, None)
        remove_files(self.path, space_key(name, key))

    # --- vectors -----------------------------------------------------------------------------------
    def put_vectors(self, space: str, rows: list[VectorRow]) -> int:
        definition = self._definition(space)
        self._check_rows(definition, rows)
        with self._tx() as db:
            return self._write(db, definition, rows)

    def _write(self, db: sqlite3.Connection, definition: Space, rows: list[VectorRow]) -> int:
        """Upsert vectors and clear their pending rows, inside the caller's transaction."""
        space = definition.name
        existing = set()
        for part in _parts([r.chunk_id for r in rows]):
            marks = ",".join("?" * len(part))
            existing.update(i for (i,) in db.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", part))
        rows = [r for r in rows if r.chunk_id in existing]
        if definition.sparse:  # before the vectors: a replaced row's postings would otherwise outlive it
            db.executemany("DELETE FROM postings WHERE space = ? AND chunk_id = ?", [(space, r.chunk_id) for r in rows])
        # REPLACE gives a rewritten vector a new seq, so every process's search reads it as new.
        db.executemany("INSERT OR REPLACE INTO vectors (space, chunk_id, dense) VALUES (?, ?, ?)",
                       [(space, r.chunk_id, np.asarray(r.dense, "<f4").tobytes()) for r in rows])
        if definition.sparse:
            db.executemany("INSERT INTO postings (space, chunk_id, token_id, weight) VALUES (?, ?, ?, ?)", [
                (space, r.chunk_id, int(t), float(w))
                for r in rows if r.sparse for t, w in zip(r.sparse["indices"], r.sparse["values"], strict=True)
            ])
        db.executemany("DELETE FROM pending WHERE space = ? AND chunk_id = ?", [(space, r.chunk_id) for r in rows])
        return len(rows)

    def count_vectors(self, space: str) -> int:
        self._definition(space)  # unknown space: MODEL_NOT_FOUND, as in every backend
        with self._lock:
            return self.conn.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space,)).fetchone()[0]

    def get_dense(self, space: str, chunk_ids: list[int]) -> dict[int, np.ndarray]:
        out = {}
        with self._lock:
            for part in _parts(chunk_ids):
                marks = ",".join("?" * len(part))
                for chunk_id, blob in self.conn.execute(
                    f"SELECT chunk_id, dense FROM vectors WHERE space = ? AND chunk_id IN ({marks})", [space, *part]
                ):
                    out[chunk_id] = np.frombuffer(blob, "<f4").copy()
        return out

    def _index(self, space: str, refresh: bool = True) -> DenseIndex:
        """The space's dense index in this process, brought up to date (only this space's new writes are read)."""
        with self._lock:
            row = self.conn.execute("SELECT created_at, dimension FROM spaces WHERE name = ?", (space,)).fetchone()
            if row is None:
                raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{space}'")
            key, dim = space_key(space, row[0]), row[1]
            index = self._dense.get(space)
            if index is None or index.key != key:
                index = self._dense[space] = DenseIndex(self.path, key, space, dim, self.settings)
            if refresh:
                index.refresh(self.conn, (self.conn.execute("PRAGMA data_version").fetchone()[0], self._own_writes))
            return index

    def search_dense(self, space: str, query: np.ndarray, k: int) -> list[Hit]:
        query = np.asarray(query, np.float32)
        with self._lock:
            index = self._index(space)  # the one look at the space on this path: it knows the dimension
            if query.shape != (index.dim,):
                raise store_error(f"space '{space}' holds {index.dim}-dim vectors; the query has shape {query.shape}")
            if k <= 0:
                return []
            ids, scores = index.candidates(query, k)
            if scores is None:  # candidates of the index file: their exact scores, deleted chunks left out
                stored = self.get_dense(space, ids.tolist())
                ids = np.fromiter(stored, np.int64, len(stored))
                scores = np.stack(list(stored.values())) @ query if stored else np.zeros(0, np.float32)
        order = np.lexsort((ids, -scores))[:k]
        return [Hit(int(ids[i]), float(scores[i])) for i in order]

    def build_index(self, space: str) -> None:
        """Build what a space filled in bulk goes without: its impact index (lexical search), and its index file
        when it is large enough to want one (activation and reembed call this)."""
        if self._definition(space).sparse:
            with self._tx() as db:
                create_impact_index(db, space)
        with self._lock:
            index = self._index(space, refresh=False)  # the build reads the vectors itself, a page at a time
            count = self.conn.execute("SELECT count(*) FROM vectors WHERE space = ?", (space,)).fetchone()[0]
        if self.settings.ann != "exact" and count >= max(1, self.settings.ann_min_vectors):
            index.build(wait=True)

    def search_sparse(self, space: str, query: SparseVector, k: int) -> list[Hit]:
        self._definition(space)
        if not query["indices"] or k <= 0:
            return []
        with self._lock:
            return search_sparse(self.conn, space, query, k, self.settings.sparse_page, self.settings.sparse_max_rows,
                                 self.settings.sparse_shortlist)

    @contextmanager
    def space_lock(self, space: str):
        # A file lock beside the database: SQLite's own locks cannot be held across the embedding step
        # without blocking every other writer of the file.
        lock_path = self.path.with_name(f"{self.path.name}.{content_hash(space)[:16]}.lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- checkpoints -------------------------------------------------------------------------------
    def get_checkpoint(self, job: str) -> tuple[int, int]:
        with self._lock:
            return self.conn.execute("SELECT last_id, done FROM checkpoints WHERE job = ?", (job,)).fetchone() or (0, 0)

    def set_checkpoint(self, job: str, last_id: int, done: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", (job, last_id, done, time.time()))

    def close(self) -> None:
        self.conn.close()


def _parts(ids: list[int], size: int = 900) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _chunk(row) -> Chunk:
    return Chunk(id=row[0], doc_id=row[1], seq=row[2], text=row[3], content_hash=row[4], metadata=json.loads(row[5]))


def _space(row) -> Space:
    return Space(name=row[0], model_id=row[1], precision=row[2], dimension=row[3], model_ref=row[4],
                 sparse=bool(row[5]), fingerprint=row[6])
