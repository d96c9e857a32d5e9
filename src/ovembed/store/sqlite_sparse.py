"""SQLite's lexical search. Postings are one table, clustered by (space, chunk, token); each space's impact index
(its postings by token, heaviest first: a partial index per space) is read by the threshold algorithm
(sparse_topk). A space filled in bulk (by reembed, beside the active one) gets its impact index when it is built
(`build_index`, activation): one sorted pass, where maintaining it through the fill wrote it at random (1M
chunks: ~100 vectors/s at the end). Until then its searches score the query's tokens exactly in one scan."""

from __future__ import annotations

import sqlite3

import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.store.base import Hit, content_hash
from ovembed.store.sparse_topk import query_weights, top_k


def impact_index(space: str) -> str:
    return f"postings_impact_{content_hash('postings:' + space)[:16]}"


def _literal(space: str) -> str:
    return "'" + space.replace("'", "''") + "'"


def create_impact_index(db: sqlite3.Connection, space: str) -> None:
    """The space's impact index (if it has none yet). The WHERE names the space as a literal: a partial index
    serves only queries whose own WHERE matches it."""
    db.execute(f"CREATE INDEX IF NOT EXISTS {impact_index(space)} ON postings(token_id, weight DESC) "
               f"WHERE space = {_literal(space)}")


def drop_impact_index(db: sqlite3.Connection, space: str) -> None:
    db.execute(f"DROP INDEX IF EXISTS {impact_index(space)}")


def has_impact_index(db: sqlite3.Connection, space: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                      (impact_index(space),)).fetchone() is not None


class _Postings:
    """One query's reads of one space's postings (sparse_topk.Postings)."""

    def __init__(self, db: sqlite3.Connection, space: str, weights: dict[int, float]):
        self.db, self.space, self.query = db, space, weights
        # The index's own order (its key, then the table's primary key: space, chunk id): no sort, and a page
        # starts where the last ended (a seek, not an OFFSET walk over what was read).
        first = (f"SELECT chunk_id, weight FROM postings INDEXED BY {impact_index(space)} WHERE space = "
                 f"{_literal(space)} AND token_id = ?")
        self.first_sql = first + " ORDER BY weight DESC, space, chunk_id LIMIT ?"
        self.next_sql = first + " AND weight <= ? AND (weight < ? OR chunk_id > ?) ORDER BY weight DESC, space, " \
                                "chunk_id LIMIT ?"

    def pages(self, reads: list[tuple[int, tuple[float, int] | None, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for token, after, size in reads:
            rows = (self.db.execute(self.first_sql, (token, size)) if after is None else
                    self.db.execute(self.next_sql, (token, after[0], after[0], after[1], size))).fetchall()
            found = np.asarray(rows, np.float64).reshape(-1, 2)
            out.append((found[:, 0].astype(np.int64), found[:, 1]))
        return out

    def exact(self, chunk_ids: list[int]) -> dict[int, float]:
        """Each chunk's postings of the query's tokens, by primary key (a seek per chunk)."""
        scores = dict.fromkeys(chunk_ids, 0.0)
        tokens = list(self.query)
        for start in range(0, len(chunk_ids), 400):
            part = chunk_ids[start:start + 400]
            for chunk_id, token, weight in self.db.execute(
                    f"SELECT chunk_id, token_id, weight FROM postings WHERE space = ? AND chunk_id IN "
                    f"({','.join('?' * len(part))}) AND token_id IN ({','.join('?' * len(tokens))})",
                    [self.space, *part, *tokens]):
                scores[chunk_id] += weight * self.query[token]
        return scores


def search_sparse(db: sqlite3.Connection, space: str, query: SparseVector, k: int, page: int, max_rows: int,
                  shortlist: int) -> list[Hit]:
    """Chunks by the sum of weight products over shared tokens, best first, ties by chunk id, score > 0."""
    weights = query_weights(query)
    if not weights:
        return []
    if has_impact_index(db, space):
        return top_k(_Postings(db, space, weights), weights, k, page, max_rows, shortlist)
    return _scan(db, space, weights, k)


def _scan(db: sqlite3.Connection, space: str, weights: dict[int, float], k: int) -> list[Hit]:
    """Exact, by one pass over the space's postings: a space not yet built (filled in bulk, not activated)."""
    scores: dict[int, float] = {}
    for chunk_id, token, weight in db.execute(
            f"SELECT chunk_id, token_id, weight FROM postings WHERE space = ? AND token_id IN "
            f"({','.join('?' * len(weights))})", [space, *weights]):
        scores[chunk_id] = scores.get(chunk_id, 0.0) + weight * weights[token]
    best = sorted((item for item in scores.items() if item[1] > 0), key=lambda item: (-item[1], item[0]))[:k]
    return [Hit(chunk_id, score) for chunk_id, score in best]


def per_space_impact_indexes(db: sqlite3.Connection) -> None:
    """Schema 5: one impact index per space (partial), for the one over every space's postings, so a space filled
    in bulk can go without one until it is built."""
    for (space,) in db.execute("SELECT name FROM spaces WHERE sparse = 1").fetchall():
        create_impact_index(db, space)
    db.execute("DROP INDEX IF EXISTS postings_impact")
