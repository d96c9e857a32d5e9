"""Lexical top-k over impact-ordered postings, for every backend: the threshold algorithm. Each query token's
postings are read heaviest first, a page at a time (each round's page twice the last), until no chunk left unread
can reach the k-th best score found so far (a common token's long list is thus cut short); the chunks that still
could are then scored exactly. A backend gives the reads (`Postings`); this module decides what to read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.store.base import Hit

ROUNDS = 8  # pages per token at most (each twice the last)


class Postings(Protocol):
    """A backend's reads of one space's postings, for one query."""

    def pages(self, reads: list[tuple[int, tuple[float, int] | None, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (token id, after, size): that token's next `size` postings, as arrays of chunk ids (int64) and
        weights (float64), in the order weight descending, then chunk id ascending, after the posting `after` =
        (weight, chunk id) (None: from the first). A page's postings may come in any order."""

    def exact(self, chunk_ids: list[int]) -> dict[int, float]:
        """The full query score of each of `chunk_ids`."""


@dataclass
class _List:
    """What was read of one query token's postings, heaviest first."""

    token: int
    weight: float  # the query's weight of the token
    ids: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    after: tuple[float, int] | None = None  # the last posting read, in the list's order: the next page starts past it
    exhausted: bool = False

    @property
    def bound(self) -> float:
        """The most this token can add to a chunk not yet read in its list."""
        return 0.0 if self.exhausted else self.weight * self.after[0] if self.after else self.weight

    def take(self, page: tuple[np.ndarray, np.ndarray], size: int) -> int:
        ids, weights = page
        self.exhausted = len(ids) < size
        if len(ids):
            self.ids.append(ids)
            self.weights.append(weights)
            lightest = weights.min()
            self.after = (float(lightest), int(ids[weights == lightest].max()))
        return len(ids)


def query_weights(query: SparseVector) -> dict[int, float]:
    """The query's positive weights by token (a repeated token's weights summed)."""
    merged: dict[int, float] = {}
    for token, weight in zip(query["indices"], query["values"], strict=True):
        merged[int(token)] = merged.get(int(token), 0.0) + float(weight)
    return {token: weight for token, weight in merged.items() if weight > 0}


def top_k(postings: Postings, weights: dict[int, float], k: int, page: int, max_rows: int, shortlist: int
          ) -> list[Hit]:
    """Chunks by the sum of weight products over shared tokens (`weights`: the query's, from query_weights), best
    first, ties by chunk id, score > 0. Exact unless it stops at `max_rows` postings read or more than `shortlist`
    chunks could still be in the top k."""
    lists = [_List(token, weight) for token, weight in weights.items()]
    total, size, threshold = 0, page, 0.0
    ids, scores = np.zeros(0, np.int64), np.zeros(0, np.float64)
    for _ in range(ROUNDS):
        reading = [p for p in lists if not p.exhausted]
        if not reading:
            break
        found = postings.pages([(p.token, p.after, size) for p in reading])
        total += sum(p.take(page, size) for p, page in zip(reading, found, strict=True))
        ids, scores = _partial(lists)
        threshold = float(np.partition(scores, len(scores) - k)[len(scores) - k]) if len(scores) >= k else 0.0
        if sum(p.bound for p in lists) <= threshold or total >= max_rows:
            break
        size *= 2
    if not len(ids):
        return []
    open_lists = [p for p in lists if not p.exhausted]
    if open_lists:  # partial scores: keep the chunks whose best case still reaches the k-th, score them in full
        unread = sum(p.bound * ~np.isin(ids, np.concatenate(p.ids)) for p in open_lists)
        best_case = scores + unread
        keep = np.flatnonzero(best_case >= threshold)
        keep = keep[np.argsort(-best_case[keep], kind="stable")[:max(shortlist, k)]]
        exact = postings.exact(ids[keep].tolist())
        ids = ids[keep]
        scores = np.fromiter((exact.get(int(i), 0.0) for i in ids), np.float64, len(ids))
    order = np.lexsort((ids, -scores))
    return [Hit(int(ids[i]), float(scores[i])) for i in order[:k] if scores[i] > 0]


def _partial(lists: list[_List]) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk read so far and the sum of the contributions read for it."""
    ids = [part for p in lists for part in p.ids]
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    contributions = np.concatenate([w * p.weight for p in lists for w in p.weights])
    unique, where = np.unique(np.concatenate(ids), return_inverse=True)
    return unique, np.bincount(where, weights=contributions)
