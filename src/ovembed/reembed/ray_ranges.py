"""The Ray job's driver side of the work list: the id ranges still to embed, listed from pending ids only (never
the texts) a window at a time, and the ledger that turns ranges finished in any order into a checkpoint."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ovembed.store import Store

SCAN_PAGE = 4096  # ids per query while the driver lists the pending ones
# Ranges handed to Ray at once: the driver holds at most this many (not 40k at 10M chunks), and each window
# loads the actors' models once, so a window is a few minutes of work, not one range.
WINDOW_RANGES = 2048


@dataclass(frozen=True)
class IdRange:
    """Chunks lo..hi (ids) of which `n` wait for a vector: one embedder batch. `seq` orders a pass's ranges."""

    seq: int
    lo: int
    hi: int
    n: int


def missing_ranges(store: Store, space: str, batch: int) -> Iterator[IdRange]:
    """Id ranges holding `batch` chunks pending in `space` (the last range fewer), in id order.

    Cut by pending chunks, not by fixed id width: every range is one embedder batch of work however sparse
    the ids are (deleted and re-ingested documents leave gaps), and a resumed run lists only what is left."""
    ids: list[int] = []
    after = 0
    seq = itertools.count()
    while page := store.pending_ids(space, after, max(SCAN_PAGE, batch)):
        ids.extend(page)
        after = page[-1]
        while len(ids) >= batch:
            yield IdRange(next(seq), ids[0], ids[batch - 1], batch)
            del ids[:batch]
    if ids:
        yield IdRange(next(seq), ids[0], ids[-1], len(ids))


def windows(ranges: Iterable[IdRange], size: int = WINDOW_RANGES) -> Iterator[list[IdRange]]:
    """The ranges `size` at a time, listed only as each window is needed."""
    pending = iter(ranges)
    while window := list(itertools.islice(pending, size)):
        yield window


class RangeLedger:
    """One pass's ranges, listed and finished. Actors finish ranges in any order; the checkpoint may only move
    to the end of the longest run of finished ranges from the first, so it never passes one still running."""

    def __init__(self) -> None:
        self.listed = 0
        self.finished = 0
        self._his: dict[int, int] = {}  # seq -> hi, for the ranges not yet in the finished prefix
        self._done: set[int] = set()  # finished, but behind an unfinished one
        self._next = 0  # the first range not finished

    def add(self, ranges: Iterable[IdRange]) -> None:
        for r in ranges:
            self._his[r.seq] = r.hi
            self.listed += 1

    def finish(self, seq: int) -> int | None:
        """Record range `seq` as done; returns the checkpoint's new last id when the finished prefix grew."""
        self._done.add(seq)
        self.finished += 1
        last = None
        while self._next in self._done:
            self._done.remove(self._next)
            last = self._his.pop(self._next)
            self._next += 1
        return last
