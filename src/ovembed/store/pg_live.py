"""PostgreSQL under live writes: the ingest barrier, the reembed lease, the sweep, DDL that never queues long
in front of ingestion, the space lock of lazy fills and the jobs' checkpoints. A mixin of PostgresStore (it uses
the store's `_tx`, `_session`, `_table` and `where`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg import sql

from ovembed.errors import ErrorKind, OvembedError
from ovembed.store.base import content_hash

INGEST_LOCK = (0x6F76656D, 1)  # (classid, objid): shared by chunk inserts, exclusive for activation's switch
SEED_PAGE = 20_000  # chunks per transaction while a new space's pending rows are written
LOCK_TIMEOUT = "500ms"  # DDL and the switch: wait this long for a lock, then let others by and retry
LOCK_RETRY_S = 120.0  # ... for at most this long

T = TypeVar("T")


class LiveWrites:
    def sweep(self, space: str) -> int:
        self._wait_for_ingest()
        added, after = 0, 0
        while True:
            try:
                with self._tx() as db:
                    _, table = self._table(db, space)
                    hi = db.execute("SELECT max(id) FROM (SELECT id FROM chunks WHERE id > %s ORDER BY id LIMIT %s) p",
                                    (after, SEED_PAGE)).fetchone()[0]
                    if hi is None:
                        db.execute("UPDATE spaces SET seeded = true WHERE name = %s", (space,))
                        return added
                    added += db.execute(sql.SQL(
                        "INSERT INTO pending SELECT %s, c.id FROM chunks c WHERE c.id > %s AND c.id <= %s AND NOT EXISTS "
                        "(SELECT 1 FROM {} v WHERE v.chunk_id = c.id) ON CONFLICT DO NOTHING").format(table),
                        (space, after, hi)).rowcount
            except psycopg.errors.ForeignKeyViolation:
                continue  # a chunk of the page was deleted meanwhile: the page again, without it
            after = hi

    def _wait_for_ingest(self) -> None:
        """Wait until every chunk insert in flight now has ended (new ones are not waited for, nor held back):
        after it, every chunk insert sees the spaces that exist now and writes their pending rows itself."""
        query = ("SELECT virtualtransaction FROM pg_locks WHERE locktype = 'advisory' AND granted "
                 "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                 "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 2")
        with self._tx() as db:
            holders = {r[0] for r in db.execute(query, INGEST_LOCK)}
        while holders:
            time.sleep(0.02)
            with self._tx() as db:
                holders &= {r[0] for r in db.execute(query, INGEST_LOCK)}

    @contextmanager
    def reembed_lease(self, space: str) -> Iterator[None]:
        key = int(content_hash(f"reembed:{space}")[:15], 16)
        # A session lock: held until released or the connection ends (kill -9 included). The connection stays this
        # thread's until the lease ends; lost, it fails every call under the lease (ConnectionLost), as it must.
        with self._session():
            with self._tx() as db:
                if not db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                    raise OvembedError(ErrorKind.BUSY, f"another reembed job is filling space '{space}' at "
                                       f"{self.where}; this one stops without doing anything (wait for that one, or "
                                       "stop it: a rerun resumes)")
            try:
                yield
            finally:
                try:
                    with self._tx() as db:
                        db.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except (OvembedError, psycopg.Error):
                    pass  # the connection is gone, and the lock with it

    def _retrying(self, body: Callable[[psycopg.Connection], T], what: str) -> T:
        """Run body(db) in a transaction whose lock waits time out after LOCK_TIMEOUT; on a timeout, let the
        queued writers by and try again, for LOCK_RETRY_S at most."""
        deadline, delay = time.monotonic() + LOCK_RETRY_S, 0.05
        while True:
            try:
                with self._tx() as db:
                    db.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
                    return body(db)
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() > deadline:
                    raise OvembedError(ErrorKind.UNAVAILABLE, f"could not {what} at {self.where}: other transactions "
                                       f"held the locks it needs for {LOCK_RETRY_S:.0f} s (see pg_stat_activity); "
                                       "nothing was changed, try again") from None
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    @contextmanager
    def space_lock(self, space: str) -> Iterator[None]:
        # A session advisory lock, on a connection that stays this thread's until it is released: it excludes
        # other processes and this process's other threads (each on its own pooled connection) alike.
        key = int(content_hash(f"space:{space}")[:15], 16)
        with self._session():
            with self._tx() as db:
                db.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                with self._tx() as db:
                    db.execute("SELECT pg_advisory_unlock(%s)", (key,))

    # --- job checkpoints -----------------------------------------------------------------------------
    def get_checkpoint(self, job: str) -> tuple[int, int]:
        with self._tx() as db:
            row = db.execute("SELECT last_id, done FROM checkpoints WHERE job = %s", (job,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def set_checkpoint(self, job: str, last_id: int, done: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO checkpoints VALUES (%s, %s, %s, now()) ON CONFLICT (job) DO UPDATE "
                "SET last_id = excluded.last_id, done = excluded.done, updated_at = excluded.updated_at",
                (job, last_id, done),
            )
