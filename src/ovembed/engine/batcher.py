"""Batching by tokens: plan_batches packs length-sorted texts under a token budget; TokenBudgetBatcher
merges concurrent callers' texts into engine calls, in a short lane (queries) and a bulk lane (documents)."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ovembed.engine.outputs import Embeddings


@dataclass(frozen=True)
class TokenBudget:
    """Limits for one inference batch.

    tokens: padded tokens (batch x longest) per batch; bounds activations that grow linearly.
    attention: batch x longest^2 per batch; attention grows with the square of the length, so long
    sequences get small batches and one past the limit runs alone.
    """

    tokens: int = 16384
    attention: int = 16384 * 512
    max_batch: int = 128


def plan_batches(lengths: list[int], budget: TokenBudget) -> list[list[int]]:
    """Indices grouped into batches, shortest first; every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for idx in order:
        longest = lengths[idx]  # sorted ascending: the newcomer is the longest
        size = len(current) + 1
        fits = (
            size <= budget.max_batch
            and size * longest <= budget.tokens
            and size * longest * longest <= budget.attention
        )
        if current and not fits:
            batches.append(current)
            current = []
        current.append(idx)
    if current:
        batches.append(current)
    return batches


class Overloaded(Exception):
    """The batcher's queue is full; the caller should retry later."""


SHORT_REQUEST_TOKENS = 512  # a request of at most this many tokens takes the short lane (OVEMBED_SHORT_REQUEST_TOKENS)
BULK_YIELD_MS = 250.0  # on a shared engine, longest a bulk batch waits for short work (OVEMBED_BULK_YIELD_MS)
RELEASE_TOKENS = 2048  # an idle lane gives back buffers sized for a batch larger than this (OVEMBED_RELEASE_TOKENS)
IDLE_RELEASE_S = 1.0  # ... once it has been idle this long (not between the back-to-back calls of a busy lane)
BULK, SHORT = 0, 1  # the lanes, also the runtime index each uses (EmbeddingModel.embed_tokens(lane=...))


@dataclass
class _Job:
    ids: list[list[int]]
    wanted: frozenset[str]
    future: Future
    tokens: int


class _Parts:
    """A bulk job's rows as its batches finish; whole, it becomes the job's Embeddings."""

    def __init__(self, job: _Job, dimension: int):
        n = len(job.ids)
        self.job = job
        self.left = n
        self.dense = np.zeros((n, dimension), np.float32) if "dense" in job.wanted else None
        self.sparse: list | None = [None] * n if "sparse" in job.wanted else None
        self.colbert: list | None = [None] * n if "colbert" in job.wanted else None

    def put(self, row: int, result: Embeddings, k: int) -> None:
        if self.dense is not None:
            self.dense[row] = result.dense[k]
        if self.sparse is not None:
            self.sparse[row] = result.sparse[k]
        if self.colbert is not None:
            self.colbert[row] = result.colbert[k]
        self.left -= 1

    def result(self) -> Embeddings:
        return Embeddings(self.dense, self.sparse, self.colbert, [len(x) for x in self.job.ids])


class TokenBudgetBatcher:
    """Merges concurrent callers' texts into engine calls, in two lanes so short work never waits behind bulk.

    A request of at most `short_tokens` tokens (a query) takes the short lane; a longer one (documents) the bulk
    lane. Each lane has its own worker thread, which dispatches at once when idle and merges whatever queued
    while it was busy (optionally waiting up to `max_wait_ms` for companions). The short lane runs its merged
    requests in one engine call on the model's short-lane runtime. The bulk lane plans its merged texts into
    length-sorted token-budget batches and runs them one at a time, handing each request back as soon as its
    own rows are done. When the model has a runtime per lane (EmbeddingModel(lanes=2)) the lanes run at once
    and a query never waits for a document's batch; when they share one runtime, the bulk lane steps aside
    before each batch while short work is queued or running, for at most `bulk_yield_ms` (aging: documents
    are never starved by a stream of queries), so a query waits at most one bulk batch.
    Vectors do not depend on the lane: both run the same compiled graph with the same settings, and every
    text's vector is independent of its batch neighbours (the batching-agreement tests guard that).
    `short_tokens=0` turns the short lane off: everything is bulk, first come first served.

    The queue is bounded in texts across both lanes: past `max_queue_texts` a submit raises Overloaded
    instead of growing memory (a single request larger than the bound is still admitted when the queue is
    empty, so the queue never holds more than max(max_queue_texts, texts per request))."""

    def __init__(self, model, max_wait_ms: float = 0.0, max_queue_texts: int = 4096, on_dispatch=None,
                 short_tokens: int = SHORT_REQUEST_TOKENS, bulk_yield_ms: float = BULK_YIELD_MS,
                 release_tokens: int = RELEASE_TOKENS):
        self.model = model
        self.max_wait = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self.short_tokens = short_tokens
        self.bulk_yield = bulk_yield_ms / 1000
        self.release_tokens = release_tokens
        self.max_dispatch_tokens = 4 * model.budget.tokens  # bounds the texts one bulk dispatch plans at once
        self._on_dispatch = on_dispatch  # callback(sequences, tokens) for metrics
        self._queues: tuple[deque[_Job], deque[_Job]] = (deque(), deque())  # per lane: 0 bulk, 1 short
        self._busy = [False, False]  # per lane: its jobs are in the engine now
        self._pending_texts = 0
        self.high_water = 0  # most texts ever queued at once (the soak test checks it against the bound)
        self._cond = threading.Condition()
        self._closed = False
        name = model.manifest.name
        self._threads = [threading.Thread(target=self._serve, args=(lane, run), name=f"batcher-{kind}-{name}",
                                          daemon=True)
                         for lane, kind, run in ((BULK, "bulk", self._run_bulk), (SHORT, "short", self._run_merged))
                         if lane == BULK or short_tokens > 0]
        for thread in self._threads:
            thread.start()

    @property
    def pending_texts(self) -> int:
        return self._pending_texts

    @property
    def _thread(self) -> threading.Thread:  # the bulk worker (tests check it survives a bad job)
        return self._threads[0]

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def submit(self, ids: list[list[int]], wanted: list[str]) -> Future:
        """Queue tokenized texts; the future's result is an Embeddings (raw: not normalized)."""
        job = _Job(ids, frozenset(wanted), Future(), sum(len(x) for x in ids))
        with self._cond:
            if self._closed:
                raise Overloaded("the service is shutting down")
            if self._pending_texts and self._pending_texts + len(ids) > self.max_queue_texts:
                raise Overloaded(f"{self._pending_texts} texts are already queued")
            self._queues[SHORT if 0 < job.tokens <= self.short_tokens else BULK].append(job)
            self._pending_texts += len(ids)
            self.high_water = max(self.high_water, self._pending_texts)
            self._cond.notify_all()
        return job.future

    def close(self) -> None:
        """Finish every queued job, then stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    # --- each lane's worker --------------------------------------------------------------------------

    def _serve(self, lane: int, run) -> None:
        while (jobs := self._take(lane)) is not None:
            try:
                if jobs:
                    run(jobs)
            except Exception as exc:  # noqa: BLE001 - a fault here must not leave a caller waiting forever
                _fail_unfinished(jobs, exc)
            finally:
                with self._cond:
                    self._busy[lane] = False
                    self._cond.notify_all()

    def _take(self, lane: int) -> list[_Job] | None:
        """Jobs from one lane's queue (waits for the first; merges up to max_dispatch_tokens); None once closed and
        empty. A lane that stays idle for IDLE_RELEASE_S gives back its large buffers once (_release)."""
        queue, idle_since, released = self._queues[lane], time.monotonic(), False
        with self._cond:
            while not queue:
                if self._closed:
                    return None
                left = idle_since + IDLE_RELEASE_S - time.monotonic()
                if released or left > 0:
                    self._cond.wait(None if released else left)
                    continue
                released = True
                self._cond.release()  # no lock held while the runtime frees memory
                try:
                    self._release(lane)
                finally:
                    self._cond.acquire()
            deadline = time.monotonic() + self.max_wait
            while not self._closed and sum(j.tokens for j in queue) < self.max_dispatch_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, tokens = [], 0
            while queue and (not taken or tokens + queue[0].tokens <= self.max_dispatch_tokens):
                job = queue.popleft()
                taken.append(job)
                tokens += job.tokens
            self._pending_texts -= sum(len(j.ids) for j in taken)
            self._busy[lane] = True
            return [j for j in taken if j.future.set_running_or_notify_cancel()]

    def _release(self, lane: int) -> None:
        """Give back the buffers a large batch left behind (RSS after a burst returns near its warm level). On a
        shared runtime only when the other lane is idle too."""
        with self._cond:
            if self.model.lanes == 1 and (any(self._queues) or any(self._busy)):
                return
        self.model.release_buffers(lane, self.release_tokens)

    # --- the short lane ------------------------------------------------------------------------------

    def _run_merged(self, jobs: list[_Job]) -> None:
        try:
            ids = [row for job in jobs for row in job.ids]
            wanted = sorted(set().union(*(job.wanted for job in jobs)))
            result = self.model.embed_tokens(ids, wanted, normalize=False, lane=SHORT)
            self._dispatched(len(ids), sum(result.token_counts))
        except Exception:
            # One bad job must not fail its neighbours: retry each alone, so only it gets the error.
            for job in jobs:
                self._run_alone(job, lane=SHORT)
            return
        start = 0
        for job in jobs:
            end = start + len(job.ids)
            job.future.set_result(result.slice(start, end, job.wanted))
            start = end

    def _run_alone(self, job: _Job, lane: int) -> None:
        try:
            job.future.set_result(self.model.embed_tokens(job.ids, sorted(job.wanted), normalize=False, lane=lane))
        except Exception as exc:
            job.future.set_exception(exc)

    # --- the bulk lane -------------------------------------------------------------------------------

    def _run_bulk(self, jobs: list[_Job]) -> None:
        rows = [(j, r) for j, job in enumerate(jobs) for r in range(len(job.ids))]
        lengths = [len(jobs[j].ids[r]) for j, r in rows]
        parts: list[_Parts | None] = [_Parts(job, self.model.dimension) for job in jobs]
        for j, part in enumerate(parts):
            if part.left == 0:  # no texts: nothing to wait for
                part.job.future.set_result(part.result())
                parts[j] = None
        for batch in plan_batches(lengths, self.model.budget):
            batch = [k for k in batch if parts[rows[k][0]] is not None]  # skip the rows of jobs that failed
            if not batch:
                continue
            self._step_aside()
            ids = [jobs[rows[k][0]].ids[rows[k][1]] for k in batch]
            wanted = sorted(set().union(*(jobs[rows[k][0]].wanted for k in batch)))
            try:
                result = self.model.embed_tokens(ids, wanted, normalize=False, lane=BULK)
            except Exception:
                # Only the jobs in this batch are suspects: each is run alone and ends with its own outcome.
                for j in sorted({rows[k][0] for k in batch}):
                    self._run_alone(jobs[j], lane=BULK)
                    parts[j] = None
                continue
            self._dispatched(len(ids), sum(result.token_counts))
            for i, k in enumerate(batch):
                j, r = rows[k]
                part = parts[j]
                part.put(r, result, i)
                if part.left == 0:
                    part.job.future.set_result(part.result())
                    parts[j] = None

    def _step_aside(self) -> None:
        """On a shared runtime, let queued or running short work go first, for at most bulk_yield seconds."""
        if self.short_tokens <= 0 or self.model.lanes > 1:
            return
        deadline = time.monotonic() + self.bulk_yield
        with self._cond:
            while (self._queues[SHORT] or self._busy[SHORT]) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _dispatched(self, sequences: int, tokens: int) -> None:
        if self._on_dispatch is not None:
            self._on_dispatch(sequences, tokens)


def _fail_unfinished(jobs: list[_Job], exc: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
