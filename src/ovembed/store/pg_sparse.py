"""Lexical search on PostgreSQL: a postings table per sparse space (token id, weight, chunk id), read by impact (each
query token's heaviest postings first), the shortlist re-scored exactly from the stored `sparsevec` column."""

from __future__ import annotations

import numpy as np
from pgvector import SparseVector as PgSparseVector
from psycopg import Connection, sql

from ovembed.engine.outputs import SparseVector
from ovembed.store.base import store_error

SPARSE_DIM = 250002  # BGE-M3's vocabulary: lexical weights are indexed by token id


def postings_table(table: str) -> sql.Identifier:
    return sql.Identifier(f"{table}_postings")


def create_postings(db: Connection, table: str) -> None:
    """The postings of a sparse space, without a foreign key (as the vectors table: DDL never waits on ingest)."""
    postings = f"{table}_postings"
    db.execute(sql.SQL("CREATE TABLE {} (token_id int NOT NULL, weight real NOT NULL, chunk_id bigint NOT NULL)"
                       ).format(sql.Identifier(postings)))
    # The impact order a query reads, covering, so the read touches the index alone.
    db.execute(sql.SQL("CREATE INDEX {} ON {} (token_id, weight DESC) INCLUDE (chunk_id)").format(
        sql.Identifier(f"{postings}_impact"), sql.Identifier(postings)))
    db.execute(sql.SQL("CREATE INDEX {} ON {} (chunk_id)").format(sql.Identifier(f"{postings}_chunk"),
                                                                  sql.Identifier(postings)))


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


def sparse_search_sql(table: str) -> sql.Composed:
    """Partial scores from each query token's `depth` heaviest postings; the best `shortlist` chunks by partial
    score scored exactly (`<#>` on the sparsevec). Parameters: `sparse_search_params`."""
    return sql.SQL(
        "WITH q AS (SELECT * FROM unnest(%(tokens)s::int[], %(weights)s::float8[]) AS q(token_id, weight)), "
        "partial AS (SELECT p.chunk_id, sum(q.weight * p.weight) AS score FROM q CROSS JOIN LATERAL "
        "(SELECT chunk_id, weight FROM {} p WHERE p.token_id = q.token_id ORDER BY p.weight DESC LIMIT %(depth)s) p "
        "GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT %(shortlist)s) "
        "SELECT v.chunk_id, -(v.sparse <#> %(query)s) AS score FROM partial JOIN {} v ON v.chunk_id = partial.chunk_id "
        "WHERE (v.sparse <#> %(query)s) < 0 ORDER BY score DESC, v.chunk_id LIMIT %(k)s"
    ).format(postings_table(table), sql.Identifier(table))


def sparse_search_params(query: PgSparseVector, k: int, depth: int, shortlist: int) -> dict:
    return {"tokens": query.indices(), "weights": query.values(), "depth": depth, "shortlist": max(shortlist, 10 * k),
            "query": query, "k": k}


def search_postings(db: Connection, table: str, query: PgSparseVector, k: int, depth: int, fraction: float,
                    shortlist: int) -> list[tuple[int, float]]:
    """The k best (chunk id, score) by the sum of weight products over shared tokens, ties by chunk id, score > 0;
    each token's postings read to `depth`, or `fraction` of the space's rows if more."""
    # The planner's row estimate, not a count: a catalog read whatever the table's size.
    rows = db.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                      (sql.Identifier(table).as_string(db),)).fetchone()[0]
    return db.execute(sparse_search_sql(table),
                      sparse_search_params(query, k, max(depth, int(fraction * max(rows, 0))), shortlist)).fetchall()
