"""SQLite's lexical search: impact-ordered postings read with the threshold algorithm. Each query token's postings
are read heaviest first, a page at a time, until no chunk left unread can reach the k-th best score found so far
(a common token's long list is thus cut short); the chunks that still could are re-scored exactly."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.store.base import Hit

ROUNDS = 8  # pages per token at most (each twice the last)


@dataclass
class _Postings:
    """What was read of one query token's postings, heaviest first."""

    token: int
    weight: float  # the query's weight of the token
    ids: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    read: int = 0
    exhausted: bool = False

    @property
    def bound(self) -> float:
        """The most this token can add to a chunk not yet read in its list."""
        return 0.0 if self.exhausted else self.weight * float(self.weights[-1][-1]) if self.weights else self.weight

    def read_page(self, db: sqlite3.Connection, space: str, size: int) -> int:
        rows = db.execute("SELECT chunk_id, weight FROM postings WHERE space = ? AND token_id = ? "
                          "ORDER BY weight DESC, chunk_id LIMIT ? OFFSET ?", (space, self.token, size, self.read)).fetchall()
        self.exhausted = len(rows) < size
        if rows:
            found = np.asarray(rows, np.float64)
            self.ids.append(found[:, 0].astype(np.int64))
            self.weights.append(found[:, 1])
            self.read += len(rows)
        return len(rows)


def search_sparse(db: sqlite3.Connection, space: str, query: SparseVector, k: int, page: int, max_rows: int,
                  shortlist: int) -> list[Hit]:
    """Chunks by the sum of weight products over shared tokens, best first, ties by chunk id. Exact unless it
    stops at `max_rows` postings read or more than `shortlist` chunks could still be in the top k."""
    merged: dict[int, float] = {}
    for token, weight in zip(query["indices"], query["values"], strict=True):
        merged[int(token)] = merged.get(int(token), 0.0) + float(weight)
    lists = [_Postings(token, weight) for token, weight in merged.items() if weight > 0]
    total, size = 0, page
    for _ in range(ROUNDS):
        total += sum(p.read_page(db, space, size) for p in lists if not p.exhausted)
        ids, scores = _partial(lists)
        threshold = float(np.partition(scores, len(scores) - k)[len(scores) - k]) if len(scores) >= k else 0.0
        if sum(p.bound for p in lists) <= threshold or total >= max_rows:
            break
        size *= 2
    if not len(ids):
        return []
    open_lists = [p for p in lists if not p.exhausted]
    if open_lists:  # partial scores: keep the chunks whose best case still reaches the k-th, score them in full
        unread = [~np.isin(ids, np.concatenate(p.ids)) for p in open_lists]
        best_case = scores + sum(p.bound * missing for p, missing in zip(open_lists, unread))
        keep = np.flatnonzero(best_case >= threshold)
        keep = keep[np.argsort(-best_case[keep], kind="stable")[:max(shortlist, k)]]
        ids, scores = ids[keep], scores[keep] + _unread(db, space, open_lists, [m[keep] for m in unread], ids[keep])
    order = np.lexsort((ids, -scores))
    return [Hit(int(ids[i]), float(scores[i])) for i in order[:k] if scores[i] > 0]


def _partial(lists: list[_Postings]) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk read so far and the sum of the contributions read for it."""
    ids = [part for p in lists for part in p.ids]
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    contributions = np.concatenate([w * p.weight for p in lists for w in p.weights])
    unique, where = np.unique(np.concatenate(ids), return_inverse=True)
    return unique, np.bincount(where, weights=contributions)


def _unread(db: sqlite3.Connection, space: str, lists: list[_Postings], unread: list[np.ndarray],
            ids: np.ndarray) -> np.ndarray:
    """What the unread parts of the cut lists add to each of `ids`: only those chunks are looked up, only in
    those lists (a primary-key seek each)."""
    extra = np.zeros(len(ids), np.float64)
    where = {int(chunk_id): i for i, chunk_id in enumerate(ids.tolist())}
    for postings, missing in zip(lists, unread, strict=True):
        todo = ids[missing].tolist()
        for start in range(0, len(todo), 500):
            part = todo[start:start + 500]
            for chunk_id, weight in db.execute(
                    f"SELECT chunk_id, weight FROM postings WHERE space = ? AND chunk_id IN ({','.join('?' * len(part))}) "
                    "AND token_id = ?", [space, *part, postings.token]):
                extra[where[chunk_id]] += weight * postings.weight
    return extra
