"""PostgreSQL at scale (issue 16), on a real PostgreSQL + pgvector: the halfvec and binary HNSW indexes and the plans
that use them, sized and concurrent builds with their progress, COPY writes, the pool's reconnects, and lexical
search through impact-ordered postings, each against exact search in NumPy."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg import sql

from ovembed.bench.store_data import (
    corpus_vectors,
    exact_dense_top,
    exact_sparse_top,
    query_vectors,
    sparse_corpus,
    sparse_queries,
    sparse_row,
)
from ovembed.config import StoreSettings
from ovembed.store import ChunkInput, Space, VectorRow
from ovembed.store.pg_index import build_memory_mb, dense_search_sql, graph_options
from ovembed.store.pg_pool import ConnectionLost
from ovembed.store.pg_sparse import has_impact_index, pages_sql
from ovembed.store.postgres import PostgresStore

LIVE = Space("live", "placeholder", "fp32", 4)  # the active space, so the measured one fills and is indexed later


def filled(url: str, n: int, dim: int, settings: StoreSettings | None = None, seed: int = 1):
    """A store whose space 's' (inactive, unindexed) holds n topical unit vectors; returns (store, ids, vectors)."""
    store = PostgresStore(url, settings)
    store.create_space(LIVE)
    store.create_space(Space("s", "synthetic", "fp32", dim))
    vectors = corpus_vectors(n, dim, seed)
    ids = store.upsert_document("doc", [ChunkInput(f"chunk {i}") for i in range(n)])
    store.put_vectors("s", [VectorRow(i, v) for i, v in zip(ids, vectors, strict=True)])
    return store, np.array(ids), vectors


def table_of(store: PostgresStore, space: str) -> str:
    with store._tx() as db:
        return store._table(db, space)[1].as_string(db).strip('"')


def recall_at_10(store, ids, vectors, seed=2, count=50) -> float:
    queries = query_vectors(vectors, count, seed)
    truth = exact_dense_top(vectors, ids, queries, 10)
    return float(np.mean([len({h.chunk_id for h in store.search_dense("s", q, 10)} & t) / 10
                          for q, t in zip(queries, truth, strict=True)]))


def plan(url: str, query: sql.Composable, params, seqscan: bool = True) -> str:
    with psycopg.connect(url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        conn.execute(f"SET enable_seqscan = {'on' if seqscan else 'off'}")
        return "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + query, params))


def test_halfvec_expression_index_carries_the_settings_and_the_search_uses_it(postgres_db):
    settings = StoreSettings(hnsw_m=12, hnsw_ef_construction=48)
    store, ids, vectors = filled(postgres_db, 3000, 64, settings)
    with store:
        store.build_index("s")
        table = table_of(store, "s")
        assert store.dense_index("s") == "halfvec"
        with psycopg.connect(postgres_db) as conn:
            [(definition,)] = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                           (f"{table}_halfvec",)).fetchall()
        assert "halfvec(64)) halfvec_cosine_ops" in definition and "m='12'" in definition \
            and "ef_construction='48'" in definition
        query = query_vectors(vectors, 1, 3)[0]
        explained = plan(postgres_db, dense_search_sql(table, "halfvec", 64), (query, query, 20, 10))
        assert f"Index Scan using {table}_halfvec" in explained and "Seq Scan" not in explained
        hits = store.search_dense("s", query, 10)
        exact = vectors @ query
        for hit in hits:  # re-scored on the float32 column: the exact cosine, not the half-precision one
            assert hit.score == pytest.approx(float(exact[list(ids).index(hit.chunk_id)]), abs=1e-6)
        assert recall_at_10(store, ids, vectors) >= 0.95


def test_past_pgvector_s_beam_of_1000_the_scan_goes_on_iteratively(postgres_db):
    # pgvector returns at most hnsw.ef_search (capped at 1000) rows from an HNSW scan; before the iterative scan a
    # search for 1500 got 1000. A beam past 1000 (OVEMBED_STORE_HNSW_EF_SEARCH) reads that many candidates.
    store, ids, vectors = filled(postgres_db, 3000, 16)
    with store:
        store.build_index("s")
    query = query_vectors(vectors, 1, 3)[0]
    exact = vectors @ query
    # Seq scans off: on a table this small the planner would otherwise scan it exactly, which returns every row.
    # A new store: its sessions' first search is the one that must already go on past 1000.
    no_seqscan = f"{postgres_db}{'&' if '?' in postgres_db else '?'}options=-c%20enable_seqscan%3Doff"
    with PostgresStore(no_seqscan, StoreSettings(hnsw_ef_search=2500)) as fresh:
        hits = fresh.search_dense("s", query, 1500)
        assert len(hits) == len({h.chunk_id for h in hits}) == 1500
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        best = set(ids[np.argsort(-exact)[:1500]].tolist())
        assert len(best & {h.chunk_id for h in hits}) / 1500 >= 0.95
        assert recall_at_10(fresh, ids, vectors) >= 0.95  # k = 10 with a beam of 2500: every candidate re-scored


def test_binary_quantized_index_with_reranking_keeps_recall(postgres_db):
    # 256 dims: few bits per vector, many near-ties in Hamming distance; measured recall@10 on this corpus:
    # rerank_factor 4 -> 0.95, 8 -> 0.963, 10 -> 0.965 (at 1024 dims the bits separate better).
    store, ids, vectors = filled(postgres_db, 5000, 256, StoreSettings(pg_index="binary", rerank_factor=10))
    with store:
        store.build_index("s")
        assert store.dense_index("s") == "binary"
        table = table_of(store, "s")
        query = query_vectors(vectors, 1, 3)[0]
        explained = plan(postgres_db, dense_search_sql(table, "binary", 256), (query, query, 100, 10))
        assert f"Index Scan using {table}_binary" in explained and "Seq Scan" not in explained
        assert recall_at_10(store, ids, vectors) >= 0.95


def test_a_store_with_the_old_vector_index_keeps_searching_it_until_the_new_one_replaces_it(postgres_db):
    store, ids, vectors = filled(postgres_db, 500, 32)
    with store:
        table = table_of(store, "s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:  # as ovembed 0.2 indexed a space
            conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (dense vector_cosine_ops)")
        assert store.dense_index("s") == "vector"
        assert recall_at_10(store, ids, vectors) >= 0.95
        store.build_index("s")
        assert store.dense_index("s") == "halfvec"
        with psycopg.connect(postgres_db) as conn:
            names = {n for (n,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))}
        assert names == {f"{table}_pkey", f"{table}_halfvec"}


def test_build_memory_is_sized_from_the_rows_within_the_cap_and_applied(postgres_db):
    settings = StoreSettings(index_memory_max_mb=4096, index_workers=1)
    # 10M x 1024 on halfvec: 2.67 KB a vector (measured) is ~26 GB: the cap. 1M binary: ~0.42 KB -> ~500 MB.
    assert build_memory_mb("halfvec", 10_000_000, 1024, settings) == 4096
    assert 450 <= build_memory_mb("binary", 1_000_000, 1024, settings) <= 560
    assert build_memory_mb("halfvec", 1000, 64, settings) == 64  # never below the default
    assert build_memory_mb("halfvec", 200_000, 1024, settings) == pytest.approx(200_000 * 2731 * 1.25 / 2**20, abs=1)
    store, _, _ = filled(postgres_db, 300, 16, settings)
    with store:
        store.build_index("s")
        report = store.last_build
        assert (report.kind, report.rows, report.maintenance_work_mem, report.workers) == ("halfvec", 300, "64MB", 1)


def test_a_searched_space_is_indexed_concurrently_while_ingest_commits_and_the_build_reports_progress(postgres_db):
    store = PostgresStore(postgres_db, StoreSettings(hnsw_ef_construction=200))  # a build slow enough to write during
    with store:
        store.create_space(Space("s", "synthetic", "fp32", 128))  # the first space: active, searched
        table = table_of(store, "s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:  # filled without it, as a bulk load would be
            conn.execute(f"DROP INDEX {table}_halfvec")
        vectors = corpus_vectors(5000, 128, 1)
        ids = store.upsert_document("doc", [ChunkInput(f"chunk {i}") for i in range(len(vectors))])
        store.put_vectors("s", [VectorRow(i, v) for i, v in zip(ids, vectors, strict=True)])
        seen, written = [], []

        def ingest_during_build(progress):
            seen.append(progress)
            if not written:  # the build is running: an ingest into the searched space must commit now
                new = store.upsert_document("during", [ChunkInput("written during the build")])
                store.put_vectors("s", [VectorRow(new[0], vectors[0])])
                written.append((new[0], store.build_progress("s")))

        store.build_index("s", progress=ingest_during_build, every_s=0.2)
        assert store.last_build.concurrently and store.dense_index("s") == "halfvec"
        assert written and written[0][1] is not None, "the ingest committed while the build was running"
        assert seen[0].index == f"{table}_halfvec" and seen[0].phase.startswith(("building", "waiting"))
        assert written[0][0] in {h.chunk_id for h in store.search_dense("s", vectors[0], 3)}


def test_an_invalid_index_left_by_a_crashed_build_is_dropped_and_rebuilt(postgres_db):
    store, ids, vectors = filled(postgres_db, 3000, 64, StoreSettings(hnsw_ef_construction=200))
    with store:
        table = table_of(store, "s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '300ms'")  # the build is cut as a crash would cut it
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(f"CREATE INDEX CONCURRENTLY {table}_halfvec ON {table} USING hnsw "
                             "((dense::halfvec(64)) halfvec_cosine_ops)")
        assert store.dense_index("s") is None  # invalid: never searched
        store.build_index("s")
        assert store.dense_index("s") == "halfvec" and recall_at_10(store, ids, vectors) >= 0.95


def test_copy_writes_upsert_skip_deleted_chunks_and_clear_pending_rows(postgres_db):
    with PostgresStore(postgres_db) as store:
        store.create_space(Space("s", "synthetic", "fp32", 8, sparse=True))
        ids = store.upsert_document("big", [ChunkInput(f"chunk {i}", {"i": i}) for i in range(2000)])
        assert ids == sorted(ids) and [c.seq for c in store.get_chunks(ids[:3])] == [0, 1, 2]
        assert store.get_chunks([ids[1999]])[0].metadata == {"i": 1999}
        gone = store.upsert_document("gone", [ChunkInput("deleted before its vector arrives")])
        store.delete_document("gone")
        vectors = corpus_vectors(len(ids), 8, 1)
        first = [VectorRow(i, v, {"indices": [1, 7], "values": [0.5, 0.25]}) for i, v in zip(ids, vectors, strict=True)]
        assert store.put_vectors("s", first + [VectorRow(gone[0], vectors[0])]) == len(ids)  # the deleted one skipped
        assert store.count_vectors("s") == len(ids) and not store.has_pending("s")
        again = [VectorRow(ids[0], vectors[1], {"indices": [9], "values": [0.5]}),
                 VectorRow(ids[0], vectors[2], {"indices": [3], "values": [0.5]})]  # twice in a batch: the last wins
        assert store.put_vectors("s", again) == 2
        np.testing.assert_allclose(store.get_dense("s", [ids[0]])[ids[0]], vectors[2], atol=1e-6)
        assert [h.chunk_id for h in store.search_sparse("s", {"indices": [3, 9], "values": [1.0, 1.0]}, 5)] == [ids[0]]
        assert ids[0] not in {h.chunk_id for h in store.search_sparse("s", {"indices": [1], "values": [1.0]}, 3000)}
        store.delete_document("big")
        assert store.search_sparse("s", {"indices": [1, 3], "values": [1.0, 1.0]}, 5) == []
        with psycopg.connect(postgres_db) as conn:  # the postings went with their chunks
            assert conn.execute(f"SELECT count(*) FROM {table_of(store, 's')}_postings").fetchone()[0] == 0


def kill_other_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND pid <> pg_backend_pid()").fetchall())


def test_pooled_connections_killed_on_the_server_are_replaced_and_a_lost_lease_says_so(postgres_db):
    with PostgresStore(postgres_db, StoreSettings(pool_min=2, pool_max=4)) as store:
        store.create_space(Space("s", "synthetic", "fp32", 4))
        ids = store.upsert_document("a", [ChunkInput("one"), ChunkInput("two")])
        store.put_vectors("s", [VectorRow(i, np.full(4, 0.5, np.float32)) for i in ids])
        assert kill_other_backends(postgres_db) >= 1
        # Idle connections: checked on the way out of the pool, replaced without a word.
        assert len(store.search_dense("s", np.full(4, 0.5, np.float32), 2)) == 2
        assert store.upsert_document("b", [ChunkInput("three")])
        # A lease's session lock lives on its connection: killed under it, every call under the lease fails as
        # transient (the reembed job retries from its checkpoint); after it, the pool serves a new connection.
        with pytest.raises(ConnectionLost, match="lost the connection"):
            with store.reembed_lease("s"):
                kill_other_backends(postgres_db)
                store.count_vectors("s")
        assert store.count_vectors("s") == 2
        with store.reembed_lease("s"):  # the lock died with its session: free again
            pass


def test_lexical_search_reads_postings_by_impact_with_recall_against_exact(postgres_db):
    n = 3000
    corpus = sparse_corpus(n, 1)
    queries = sparse_queries(corpus, 40, 2)
    with PostgresStore(postgres_db) as store:
        store.create_space(LIVE)
        store.create_space(Space("s", "synthetic", "fp32", 4, sparse=True))  # filled in bulk: no impact index yet
        ids = np.array(store.upsert_document("doc", [ChunkInput(f"chunk {i}") for i in range(n)]))
        unit = np.full(4, 0.5, np.float32)
        store.put_vectors("s", [VectorRow(int(c), unit, sparse_row(corpus, i)) for i, c in enumerate(ids)])
        table = table_of(store, "s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            assert has_impact_index(conn, table) is None
        truth = exact_sparse_top(corpus, ids, queries, 10)

        def assert_exact():
            for query, expected in zip(queries[:10], truth, strict=False):
                hits = store.search_sparse("s", query, 10)
                assert [h.chunk_id for h in hits] == [i for i, _ in expected]
                np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], rtol=1e-5)

        assert_exact()  # before the build: every stored row scored
        store.build_index("s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            assert has_impact_index(conn, table) is True
            conn.execute("ANALYZE")
        assert_exact()  # the default page reads every list whole here: exact, scores and ties included
        # Cut short: pages of 20, 2000 postings in all, 50 chunks scored in full; most postings never read.
        store.settings = StoreSettings(sparse_page=20, sparse_max_rows=2000, sparse_shortlist=50)
        recall = np.mean([len({h.chunk_id for h in store.search_sparse("s", q, 10)} & {i for i, _ in t}) / len(t)
                          for q, t in zip(queries, truth, strict=True)])
        assert 0.9 <= recall < 1.0
        explained = plan(postgres_db, pages_sql(table), ([1, 2], [float("inf"), 0.05], [-1, 10], [20, 40]))
        assert f"Seq Scan on {table}_postings" not in explained and f"{table}_postings_impact" in explained


def test_lexical_pages_past_ties_read_every_posting_once(postgres_db):
    """Equal weights across page boundaries (pages of 10): each page starts past the last (weight, chunk id)
    read, compared as `real` like the column, so no posting is skipped or read twice."""
    with PostgresStore(postgres_db, StoreSettings(sparse_page=10)) as store:
        store.create_space(Space("s", "synthetic", "fp32", 4, sparse=True))  # the first space: indexed at once
        ids = store.upsert_document("doc", [ChunkInput(f"chunk {i}") for i in range(95)])
        store.put_vectors("s", [VectorRow(i, np.full(4, 0.5, np.float32),
                                          {"indices": [5, 7], "values": [0.1, 0.3 if n % 3 else 0.7]})
                                for n, i in enumerate(ids)])
        hits = store.search_sparse("s", {"indices": [5, 7], "values": [1.0, 1.0]}, 95)
    expected = sorted(((0.1 + (0.3 if n % 3 else 0.7), i) for n, i in enumerate(ids)), key=lambda s: (-s[0], s[1]))
    assert [h.chunk_id for h in hits] == [i for _, i in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], rtol=1e-6)


def test_an_index_built_with_other_hnsw_settings_is_built_again_and_swapped_in(postgres_db):
    store, ids, vectors = filled(postgres_db, 1500, 32)
    with store:
        store.build_index("s")
        table = table_of(store, "s")
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            assert graph_options(conn, f"{table}_halfvec") == {"m": 16, "ef_construction": 64}
    with PostgresStore(postgres_db, StoreSettings(hnsw_m=8, hnsw_ef_construction=40)) as store:
        store.build_index("s")  # the same kind, other parameters: a new graph beside the old, then the swap
        assert store.dense_index("s") == "halfvec" and recall_at_10(store, ids, vectors) >= 0.95
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            swapped = conn.execute("SELECT %s::regclass::oid", (f"{table}_halfvec",)).fetchone()[0]
        store.build_index("s")  # the same parameters again: left as it is
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        assert conn.execute("SELECT %s::regclass::oid", (f"{table}_halfvec",)).fetchone()[0] == swapped
        assert graph_options(conn, f"{table}_halfvec") == {"m": 8, "ef_construction": 40}
        names = {n for (n,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))}
    assert names == {f"{table}_pkey", f"{table}_halfvec"}
