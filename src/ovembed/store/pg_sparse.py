"""Lexical search on PostgreSQL: a postings table per sparse space (token id, weight, chunk id), read by impact (each
query token's heaviest postings first) with the threshold algorithm (sparse_topk), the chunks still in the running
scored exactly from the stored `sparsevec` column. A space filled in bulk beside the active one gets its impact
index when it is built (`build_index`): maintained through the fill, its random inserts slowed 1M chunks to ~500
vectors/s; until then its searches score every stored row exactly."""

from __future__ import annotations

import numpy as np
from pgvector import SparseVector as PgSparseVector
from psycopg import Connection, sql

from ovembed.engine.outputs import SparseVector
from ovembed.store.base import Hit, store_error
from ovembed.store.sparse_topk import query_weights, top_k

SPARSE_DIM = 250002  # BGE-M3's vocabulary: lexical weights are indexed by token id


def postings_table(table: str) -> sql.Identifier:
    return sql.Identifier(f"{table}_postings")


def impact_index(table: str) -> str:
    return f"{table}_postings_impact"


def create_postings(db: Connection, table: str, impact: bool) -> None:
    """The postings of a sparse space, without a foreign key (as the vectors table: DDL never waits on ingest);
    with its impact index if `impact` (else `create_impact_index` adds it once the space is filled)."""
    postings = f"{table}_postings"
    db.execute(sql.SQL("CREATE TABLE {} (token_id int NOT NULL, weight real NOT NULL, chunk_id bigint NOT NULL)"
                       ).format(sql.Identifier(postings)))
    # By chunk, for deletes and rewrites: a fill writes chunks in id order, so this one grows at its end.
    db.execute(sql.SQL("CREATE INDEX {} ON {} (chunk_id)").format(sql.Identifier(f"{postings}_chunk"),
                                                                  sql.Identifier(postings)))
    if impact:
        create_impact_index(db, table, concurrently=False)


def create_impact_index(db: Connection, table: str, concurrently: bool) -> None:
    """The impact order a query reads, ties by chunk id, covering (the read touches the index alone). An invalid
    one (left by a concurrent build that failed) is dropped first."""
    name = sql.Identifier(impact_index(table))
    if has_impact_index(db, table) is False:
        db.execute(sql.SQL("DROP INDEX {} IF EXISTS {}").format(sql.SQL("CONCURRENTLY" if concurrently else ""), name))
    db.execute(sql.SQL("CREATE INDEX {} IF NOT EXISTS {} ON {} (token_id, weight DESC, chunk_id)").format(
        sql.SQL("CONCURRENTLY" if concurrently else ""), name, postings_table(table)))


def has_impact_index(db: Connection, table: str) -> bool | None:
    """Whether the space's impact index is valid; None when there is none."""
    row = db.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                     "WHERE c.relname = %s", (impact_index(table),)).fetchone()
    return None if row is None else row[0]


def delete_postings(db: Connection, table: str, chunk_ids: list[int]) -> None:
    db.execute(sql.SQL("DELETE FROM {} WHERE chunk_id = ANY(%s::bigint[])").format(postings_table(table)),
               (chunk_ids,))


def to_sparsevec(weights: SparseVector) -> PgSparseVector:
    indices, values = weights["indices"], weights["values"]
    if len(indices) != len(values):
        raise store_error(f"lexical weights have {len(indices)} token ids but {len(values)} values")
    bad = [i for i in indices if not 0 <= i < SPARSE_DIM]
    if bad:
        raise store_error(f"token id {bad[0]} is outside the sparse vocabulary 0..{SPARSE_DIM - 1}")
    if not np.isfinite(values).all():
        raise store_error("lexical weights have NaN or infinite values")
    return PgSparseVector(dict(zip(map(int, indices), map(float, values), strict=True)), SPARSE_DIM)


def pages_sql(table: str) -> sql.Composed:
    """Each (token, after, size) read's postings in one statement, a row of two arrays per read (none for a read
    that found nothing): past the posting (weight, chunk id) `after` (a seek in the impact index, not an OFFSET
    walk over what was read), heaviest first, ties by chunk id. Parameters: tokens, after weights (as `real`, the
    column's type, so a weight read back compares equal to itself; Infinity for a first page), after chunk ids,
    sizes."""
    return sql.SQL(
        "SELECT r.i, array_agg(p.chunk_id), array_agg(p.weight) FROM unnest(%s::int[], %s::real[], %s::int8[], "
        "%s::int[]) WITH ORDINALITY AS r(token_id, w, c, size, i) CROSS JOIN LATERAL (SELECT chunk_id, weight FROM {} p "
        "WHERE p.token_id = r.token_id AND p.weight <= r.w AND (p.weight < r.w OR p.chunk_id > r.c) "
        "ORDER BY p.weight DESC, p.chunk_id LIMIT r.size) p GROUP BY r.i").format(postings_table(table))


class _Postings:
    """One query's reads of one space's postings (sparse_topk.Postings): a statement per round."""

    def __init__(self, db: Connection, table: str, query: PgSparseVector):
        self.db, self.table, self.query = db, table, query

    def pages(self, reads: list[tuple[int, tuple[float, int] | None, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        none = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        out = [none] * len(reads)
        params = ([token for token, _, _ in reads], [after[0] if after else float("inf") for _, after, _ in reads],
                  [after[1] if after else -1 for _, after, _ in reads], [size for _, _, size in reads])
        # One row per token, its page as two arrays, in binary: 100 000s of postings a query without a Python
        # object per row on the way.
        with self.db.cursor(binary=True) as cursor:
            for i, ids, weights in cursor.execute(pages_sql(self.table), params).fetchall():
                out[i - 1] = (np.asarray(ids, np.int64), np.asarray(weights, np.float64))
        return out

    def exact(self, chunk_ids: list[int]) -> dict[int, float]:
        rows = self.db.execute(sql.SQL("SELECT chunk_id, -(sparse <#> %s) FROM {} WHERE chunk_id = ANY(%s::bigint[])"
                                       ).format(sql.Identifier(self.table)), (self.query, chunk_ids))
        return {chunk_id: float(score) for chunk_id, score in rows}


def scan_sql(table: str) -> sql.Composed:
    """Exact lexical search over every stored row (a space filled in bulk and not built yet). Parameters: query,
    query, k."""
    return sql.SQL("SELECT chunk_id, -(sparse <#> %s) AS score FROM {} WHERE (sparse <#> %s) < 0 "
                   "ORDER BY score DESC, chunk_id LIMIT %s").format(sql.Identifier(table))


def search_postings(db: Connection, table: str, query: SparseVector, vector: PgSparseVector, k: int, page: int,
                    max_rows: int, shortlist: int) -> list[Hit]:
    """The k best chunks by the sum of weight products over shared tokens, ties by chunk id, score > 0 (`vector`:
    the query as to_sparsevec made it)."""
    weights = query_weights(query)
    if not weights:
        return []
    if has_impact_index(db, table):
        return top_k(_Postings(db, table, vector), weights, k, page, max_rows, shortlist)
    return [Hit(chunk_id, float(score)) for chunk_id, score in db.execute(scan_sql(table), (vector, vector, k))]
