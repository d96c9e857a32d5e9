"""Vector writes on PostgreSQL through COPY: a batch is copied into a staging table of the session, then moved by
one upsert (and its postings by one INSERT), instead of a statement per row. (Chunks go in one INSERT over unnest()
arrays: measured faster than COPY + staging for documents of 1000 chunks.)"""

from __future__ import annotations

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from ovembed.store.base import VectorRow
from ovembed.store.pg_sparse import postings_table, to_sparsevec

STAGE_VECTORS = "pg_temp.ovembed_stage_vectors"


def prepare_session(db: psycopg.Connection) -> None:
    """Each pooled connection, once: pgvector's types, its library loaded (its settings, hnsw.*, exist only from
    then on: a search reads them before its first vector), and the staging table (temporary: one per session, so
    concurrent writers never see each other's rows; the dimension is left open, the target column checks it)."""
    register_vector(db)
    db.execute("SELECT '[0]'::vector")
    db.execute(f"CREATE TEMP TABLE {STAGE_VECTORS.partition('.')[2]} "
               "(chunk_id bigint, dense vector, sparse sparsevec, tokens int[], weights real[])")


def copy_vectors(db: psycopg.Connection, table: str, sparse: bool, rows: list[VectorRow]) -> None:
    """Upsert `rows` (live chunks only) into the space's table, and its postings when the space is sparse."""
    latest = {r.chunk_id: r for r in rows}  # a chunk twice in a batch: the last one wins, as row by row it did
    with db.cursor() as cur, cur.copy(f"COPY {STAGE_VECTORS} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector", "sparsevec", "int4[]", "float4[]"])
        for r in latest.values():
            weights = to_sparsevec(r.sparse) if sparse and r.sparse is not None else None
            tokens = (None, None) if weights is None else (weights.indices(), weights.values())
            copy.write_row((r.chunk_id, np.asarray(r.dense, np.float32), weights, *tokens))
    db.execute(sql.SQL(
        "INSERT INTO {} (chunk_id, dense, sparse) SELECT chunk_id, dense, sparse FROM {} "
        "ON CONFLICT (chunk_id) DO UPDATE SET dense = excluded.dense, sparse = excluded.sparse"
    ).format(sql.Identifier(table), sql.SQL(STAGE_VECTORS)))
    if sparse:
        db.execute(sql.SQL("DELETE FROM {} p USING {} s WHERE p.chunk_id = s.chunk_id").format(
            postings_table(table), sql.SQL(STAGE_VECTORS)))
        db.execute(sql.SQL(
            "INSERT INTO {} (token_id, weight, chunk_id) SELECT u.token_id, u.weight, s.chunk_id FROM {} s, "
            "unnest(s.tokens, s.weights) AS u(token_id, weight) WHERE u.weight <> 0"
        ).format(postings_table(table), sql.SQL(STAGE_VECTORS)))
    db.execute(f"TRUNCATE {STAGE_VECTORS}")

