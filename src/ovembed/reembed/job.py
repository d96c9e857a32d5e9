"""`ovembed reembed`: fill a target space from the chunk texts, resumably.

Three stages overlap so the engine stays busy: a reader pages through the chunks pending in the target space
(the store's exact work list, written with every chunk insert), the embedder embeds each page (identical texts
once), a writer upserts the vectors (clearing their pending rows in the same transaction) and records progress
in the checkpoint. A crash, kill -9 or Ctrl-C at any point loses nothing: written vectors are never rewritten and
upserts are idempotent. A chunk whose insert committed late (below ids already read) is pending too: the job
runs passes until none is left, then sweeps (the idempotent repair), and only then calls the space complete.
One job per space at a time (a lease); search keeps using the active space; the target is activated only on
request, with the catch-up and the switch in one transaction.

A database that goes away mid-job (a PostgreSQL restart or failover) is waited for: the run reconnects with
exponential backoff and resumes from the checkpoint, giving up after `retries` attempts in a row without progress."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tqdm import tqdm

from ovembed.embedders import Embedder
from ovembed.errors import ErrorKind, OvembedError
from ovembed.store import Chunk, Space, Store, VectorRow, open_store

_DONE = object()
RETRIES = 8  # reconnect attempts in a row without progress before giving up
BACKOFF_S = 0.5  # first wait; doubles per attempt
BACKOFF_MAX_S = 15.0  # 0.5+1+2+4+8+15+15+15: about a minute of outage is ridden out


@dataclass
class ReembedStats:
    space: str
    chunks: int  # chunks in the store
    written: int  # vectors written by this run
    reused: int  # of those, copied from an identical text instead of embedded again
    already: int  # chunks that had a vector in the target before this run
    seconds: float
    activated: bool
    retries: int = 0  # reconnections after a lost database connection

    @property
    def rows_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


class _TextCache:
    """Vectors of recently embedded texts by content hash, so duplicates are embedded once."""

    def __init__(self, size: int = 20000):
        self.size = size
        self._rows: OrderedDict[str, VectorRow] = OrderedDict()

    def get(self, digest: str) -> VectorRow | None:
        row = self._rows.get(digest)
        if row is not None:
            self._rows.move_to_end(digest)
        return row

    def put(self, digest: str, row: VectorRow) -> None:
        self._rows[digest] = row
        if len(self._rows) > self.size:
            self._rows.popitem(last=False)


def embed_page(embedder: Embedder, chunks: list[Chunk], cache: _TextCache) -> tuple[list[VectorRow], int]:
    """Vectors for a page of chunks; each distinct text embedded once. Returns (rows, reused)."""
    todo: dict[str, Chunk] = {}
    for chunk in chunks:
        if cache.get(chunk.content_hash) is None:
            todo.setdefault(chunk.content_hash, chunk)
    if todo:
        for row, chunk in zip(embedder.vectors(list(todo.values())), todo.values(), strict=True):
            cache.put(chunk.content_hash, row)
    rows = [VectorRow(c.id, cache.get(c.content_hash).dense, cache.get(c.content_hash).sparse) for c in chunks]
    return rows, len(chunks) - len(todo)


def job_name(space: str) -> str:
    return f"reembed:{space}"


@dataclass
class JobStart:
    """Where a reembed run starts: the space it fills, its checkpoint and the store's counts."""

    space: Space
    job: str
    after_id: int
    done_before: int
    chunks: int
    already: int


def start_job(store: Store, space: Space, name: str | None = None) -> JobStart:
    """The job filling the space `space`'s model fills (named `name`, else found by the model: Store.resolve_space)."""
    space = store.resolve_space(space, name)
    job = job_name(space.name)
    after_id, done_before = store.get_checkpoint(job)
    return JobStart(space, job, after_id, done_before, store.count_chunks(), store.count_vectors(space.name))


def finish_job(store: Store, space: str, activate: bool,
               compute: Callable[[list[Chunk]], list[VectorRow]] | None = None) -> bool:
    """Index a complete space (where the backend defers it) and activate it if asked, embedding with `compute`
    what ingest added since (inside the switch); returns activated."""
    if store.has_pending(space):
        return False
    store.build_index(space)
    if activate:
        store.activate(space, compute=compute)
    return activate


def converge(store: Store, space: str, one_pass: Callable[[], None], halt: threading.Event) -> bool:
    """Run `one_pass` until the space has nothing pending and the sweep finds nothing to repair (False when
    halted first). A pass misses what committed behind its reader; the next one starts from the first id."""
    while not halt.is_set():
        one_pass()
        if halt.is_set():
            break
        if store.has_pending(space):
            continue  # committed behind the reader (a late transaction, a lazy writer's crash): another pass
        # The sweep waits for the chunk inserts in flight, so their pending rows are visible to the check after it.
        if not store.sweep(space) and not store.has_pending(space):
            return True
    return False


def reembed(db: str, embedder: Embedder, batch: int = 256, activate: bool = False, progress: bool = True,
            stop: threading.Event | None = None, retries: int = RETRIES, space: str | None = None) -> ReembedStats:
    """Fill the space of `embedder`'s model in the store at `db` (named `space`, else the one this model already
    fills whatever way it was reached, else a new one); resumes where an earlier run stopped.

    A lost database connection (`transient` errors, see store.postgres.ConnectionLost) after the job has
    started is retried: new connections, from the checkpoint, after 0.5, 1, 2, ... (at most 15) seconds."""
    halt = stop or threading.Event()
    cache = _TextCache()  # kept across attempts: what was embedded before a failure is not embedded again
    state = _Attempts()
    started = time.perf_counter()
    while True:
        try:
            return _attempt(db, embedder, space, batch, activate, progress, halt, cache, state, started)
        except OvembedError as exc:
            if not getattr(exc, "transient", False) or state.first is None or halt.is_set():
                raise  # a database that never answered is a configuration error, not a fault to wait out
            if state.written > state.written_at_failure:
                state.failures = 0  # progress since the last failure: a new outage gets the full budget
            state.written_at_failure = state.written
            state.failures += 1
            if state.failures > retries:
                raise OvembedError(ErrorKind.UNAVAILABLE, f"{exc}; gave up after {retries} retries without progress. "
                                   "Nothing is lost: run the same command again to resume from the checkpoint") from None
            state.retries += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (state.failures - 1))
            tqdm.write(f"reembed: {exc}; retrying in {delay:.1f} s ({state.failures}/{retries}), "
                       "resuming from the checkpoint", file=sys.stderr)
            if halt.wait(delay):
                raise


@dataclass
class _Attempts:
    """What the runs of one reembed call add up to."""

    first: JobStart | None = None  # the first run's start: its counts are the ones reported
    written: int = 0
    reused: int = 0
    failures: int = 0  # in a row, without progress
    written_at_failure: int = 0
    retries: int = 0


def _attempt(db: str, embedder: Embedder, name: str | None, batch: int, activate: bool, progress: bool,
             halt: threading.Event, cache: _TextCache, state: _Attempts, started: float) -> ReembedStats:
    """One run: read -> embed -> write until no chunk lacks a vector, or the first error."""
    reader_store, writer_store = _open_stores(db)
    try:
        begin = start_job(writer_store, embedder.space, name)
        # Reached through a folder or a service, the model fills its space under that space's name.
        target = embedder.space = begin.space
        with writer_store.reembed_lease(target.name):
            state.first = state.first or begin
            done = converge(writer_store, target.name, lambda: _run_stages(
                reader_store, writer_store, embedder, begin, batch, progress, halt, cache, state), halt)
            activated = done and finish_job(writer_store, target.name, activate, embedder.vectors)
        first = state.first
        return ReembedStats(target.name, first.chunks, state.written, state.reused, first.already,
                            round(time.perf_counter() - started, 3), activated, state.retries)
    finally:
        reader_store.close()
        writer_store.close()


def _open_stores(db: str) -> tuple[Store, Store]:
    """(reader's, writer's): one connection per stage."""
    reader_store = open_store(db, create=False)
    try:
        return reader_store, open_store(db, create=False)
    except BaseException:
        reader_store.close()
        raise


def _run_stages(reader_store: Store, writer_store: Store, embedder: Embedder, begin: JobStart, batch: int,
                progress: bool, halt: threading.Event, cache: _TextCache, state: _Attempts) -> None:
    """The reader and writer threads around the embedder in this thread; raises the first stage's error."""
    target = embedder.space
    bar = tqdm(total=begin.chunks, initial=begin.already, unit="chunk", desc=f"reembed {target.name}",
               disable=not progress, smoothing=0.1)
    pages: queue.Queue = queue.Queue(maxsize=2)
    results: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    quit_run = threading.Event()  # this run's reader stops; `halt` (the caller's stop) ends the whole job
    reader = threading.Thread(target=_read, name="reembed-read", daemon=True,
                              args=(reader_store, target.name, batch, pages, errors, halt, quit_run))
    writer = threading.Thread(target=_write, name="reembed-write", daemon=True,
                              args=(writer_store, target.name, begin, results, errors, state, bar))
    reader.start()
    writer.start()
    page = None
    try:
        while (page := pages.get()) is not _DONE:
            if errors:
                continue  # drain the reader
            rows, page_reused = embed_page(embedder, page, cache)
            results.put((page, rows, page_reused))
    finally:
        # On an error or Ctrl-C here: stop the reader, let the writer finish what is embedded.
        quit_run.set()
        while page is not _DONE:
            page = pages.get()
        results.put(_DONE)
        reader.join()
        writer.join()
        bar.close()
    if errors:
        raise errors[0]


def _read(store: Store, space: str, batch: int, pages: queue.Queue, errors: list[BaseException],
          halt: threading.Event, quit_run: threading.Event) -> None:
    """Reader stage: pages of pending chunks, by id, then _DONE."""
    try:
        for page in store.iter_missing(space, batch):
            if halt.is_set() or quit_run.is_set():
                break
            pages.put(page)
    except BaseException as exc:
        errors.append(exc)
    finally:
        pages.put(_DONE)


def _write(store: Store, space: str, begin: JobStart, results: queue.Queue, errors: list[BaseException],
           state: _Attempts, bar: tqdm) -> None:
    """Writer stage: upsert each embedded page and advance the checkpoint past it."""
    written = 0  # by this run
    try:
        while (item := results.get()) is not _DONE:
            page, rows, page_reused = item
            count = store.put_vectors(space, rows)
            written += count
            state.written += count
            state.reused += page_reused
            store.set_checkpoint(begin.job, page[-1].id, begin.done_before + written)
            bar.update(len(rows))
    except BaseException as exc:
        errors.append(exc)
        while results.get() is not _DONE:  # drain so the embedder never blocks on a dead writer
            pass
