"""PostgreSQL sessions: a pool of connections (checked before use, replaced when broken), transactions on them,
and connections pinned to a thread for what lives in a session (advisory locks, a caller's own transaction)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ovembed.config import StoreSettings
from ovembed.errors import ErrorKind, OvembedError

POOL_WAIT_S = 10.0  # a call waits this long for a free connection (or for the server to come back), then fails


class ConnectionLost(OvembedError):
    """PostgreSQL could not be reached or the connection broke (a restart, a failover, the network). The
    statement's transaction did not commit, or committed without the answer arriving: a caller whose work is
    idempotent (reembed) may open a new store and carry on. `transient` marks errors worth retrying."""

    transient = True


def reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class Sessions:
    """The store's connections. A call borrows one for its transaction; the connection stays pinned to the
    calling thread until the call ends, so store calls nested in it (a lease's body, a catch-up inside the switch)
    run in the same session and transaction, as they did on the single connection before the pool. An idle
    connection whose server process went away is found by the pool's check and replaced before anyone gets it;
    a statement in flight when the connection breaks raises ConnectionLost, and the connection is discarded."""

    def __init__(self, url: str, where: str, settings: StoreSettings, configure: Callable[[psycopg.Connection], None]):
        if settings.pool_min > settings.pool_max:
            raise OvembedError(ErrorKind.VALIDATION, f"store settings: pool_min ({settings.pool_min}) exceeds "
                               f"pool_max ({settings.pool_max})")
        self.url, self.where = url, where
        self._pinned = threading.local()
        self._kept: list[psycopg.Connection] = []  # pinned for the store's life (`connection()`), returned at close
        self.pool = ConnectionPool(url, min_size=settings.pool_min, max_size=settings.pool_max, open=False,
                                   kwargs={"autocommit": True, "connect_timeout": 5}, configure=configure,
                                   check=ConnectionPool.check_connection, timeout=POOL_WAIT_S,
                                   name=f"ovembed {where}")
        self.pool.open(wait=False)

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """This thread's connection: the one pinned to it, else one from the pool pinned until the block ends."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        db = self._checkout()
        self._pinned.conn = db
        try:
            yield db
        finally:
            self._pinned.conn = None
            self.pool.putconn(db)  # a broken one is discarded and replaced by the pool

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A transaction on this thread's connection (a savepoint when one is open on it already)."""
        with self.session() as db:
            try:
                with db.transaction():
                    yield db
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not (db.closed or db.broken):
                    raise  # e.g. a deadlock or a cancelled statement: the connection itself is fine
                raise ConnectionLost(ErrorKind.UNAVAILABLE,
                                     f"lost the connection to PostgreSQL at {self.where}: {reason(exc)}") from None

    def connection(self) -> psycopg.Connection:
        """A connection pinned to the calling thread until the store closes: store calls this thread makes inside
        `with store.conn.transaction():` join that transaction."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is None:
            pinned = self._pinned.conn = self._checkout()
            self._kept.append(pinned)
        return pinned

    def _checkout(self) -> psycopg.Connection:
        try:
            return self.pool.getconn()
        except PoolTimeout as exc:
            raise ConnectionLost(ErrorKind.UNAVAILABLE, f"no connection to PostgreSQL at {self.where} within "
                                 f"{POOL_WAIT_S:.0f} s (the server is unreachable, or all {self.pool.max_size} "
                                 f"pooled connections are busy): {reason(exc)}") from None

    def close(self) -> None:
        for db in self._kept:
            self.pool.putconn(db)
        self._kept.clear()
        self.pool.close()
