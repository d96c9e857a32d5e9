"""Batching by tokens: plan_batches packs length-sorted texts under a token budget; TokenBudgetBatcher
merges concurrent callers' texts into one engine call."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass


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


@dataclass
class _Job:
    ids: list[list[int]]
    wanted: frozenset[str]
    future: Future
    tokens: int


class TokenBudgetBatcher:
    """Merges concurrent callers' texts into one engine call.

    One worker thread per model drives the engine: when idle it dispatches at once (optionally waiting
    up to `max_wait_ms` for companions); while it is busy, new callers queue and are merged into the
    next call. The engine then packs the merged texts into length-sorted token-budget batches.
    Results go back to each caller in its own order. The queue is bounded in texts: past
    `max_queue_texts` a submit raises Overloaded instead of growing memory (a single request larger
    than the bound is still admitted when the queue is empty, so the queue never holds more than
    max(max_queue_texts, texts per request))."""

    def __init__(self, model, max_wait_ms: float = 0.0, max_queue_texts: int = 4096, on_dispatch=None):
        self.model = model
        self.max_wait = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self.max_dispatch_tokens = 4 * model.budget.tokens  # bounds how long one merged call runs
        self._on_dispatch = on_dispatch  # callback(sequences, tokens) for metrics
        self._jobs: deque[_Job] = deque()
        self._pending_texts = 0
        self.high_water = 0  # most texts ever queued at once (the soak test checks it against the bound)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{model.manifest.name}", daemon=True)
        self._thread.start()

    @property
    def pending_texts(self) -> int:
        return self._pending_texts

    def submit(self, ids: list[list[int]], wanted: list[str]) -> Future:
        """Queue tokenized texts; the future's result is an Embeddings (raw: not normalized)."""
        job = _Job(ids, frozenset(wanted), Future(), sum(len(x) for x in ids))
        with self._cond:
            if self._closed:
                raise Overloaded("the service is shutting down")
            if self._pending_texts and self._pending_texts + len(ids) > self.max_queue_texts:
                raise Overloaded(f"{self._pending_texts} texts are already queued")
            self._jobs.append(job)
            self._pending_texts += len(ids)
            self.high_water = max(self.high_water, self._pending_texts)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Finish every queued job, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait
            while not self._closed and sum(j.tokens for j in self._jobs) < self.max_dispatch_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, tokens = [], 0
            while self._jobs and (not taken or tokens + self._jobs[0].tokens <= self.max_dispatch_tokens):
                job = self._jobs.popleft()
                taken.append(job)
                tokens += job.tokens
            self._pending_texts -= sum(len(j.ids) for j in taken)
            return taken

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception:
                # One bad job must not fail its neighbours: retry each alone, so only it gets the error.
                for job in jobs:
                    try:
                        self._run([job], retry=True)
                    except Exception as exc:
                        job.future.set_exception(exc)

    def _run(self, jobs: list[_Job], retry: bool = False) -> None:
        ids = [row for job in jobs for row in job.ids]
        wanted = sorted(set().union(*(job.wanted for job in jobs)))
        result = self.model.embed_tokens(ids, wanted, normalize=False)
        if self._on_dispatch is not None and not retry:
            self._on_dispatch(len(ids), sum(result.token_counts))
        start = 0
        for job in jobs:
            end = start + len(job.ids)
            job.future.set_result(result.slice(start, end, job.wanted))
            start = end
