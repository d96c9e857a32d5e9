"""SQLite at scale, in small: the per-space HNSW index file (usearch) with exact re-scoring, incremental per-space
refresh, index files shared between processes, impact-ordered sparse search, storage near the raw size and the
warning past the tested size. Thresholds are lowered so a few thousand vectors take the large-store paths."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
from ovembed.store import ChunkInput, Space, VectorRow, open_store
from ovembed.store.sqlite_ann import index_folder, list_files
from ovembed.store.sqlite_sparse import impact_index

N, DIM = 3000, 64
SMALL = StoreSettings(ann_min_vectors=1000, ann_delta_max=300, ann_candidates=10)


def _fill(store, space: str, vectors: np.ndarray, sparse=None, doc: str = "doc") -> np.ndarray:
    ids = []
    for start in range(0, len(vectors), 1000):
        part = range(start, min(start + 1000, len(vectors)))
        ids += store.upsert_document(f"{doc}-{start}", [ChunkInput(f"chunk {i}") for i in part])
    store.put_vectors(space, [VectorRow(ids[i], vectors[i], sparse_row(sparse, i) if sparse else None)
                              for i in range(len(vectors))])
    return np.asarray(ids, np.int64)


@pytest.fixture
def indexed(tmp_path):
    """A store whose active space has an index file: N vectors, filled beside an active space, then activated."""
    store = open_store(str(tmp_path / "store.db"), settings=SMALL)
    store.create_space(Space("old", "placeholder", "fp32", DIM))
    store.create_space(Space("new", "random", "fp32", DIM))
    vectors = corpus_vectors(N, DIM, seed=1, topics=50)
    ids = _fill(store, "new", vectors)
    store.activate("new", force=True)
    yield store, vectors, ids
    store.close()


def _recall(store, space, vectors, ids, queries, k=10) -> float:
    exact = exact_dense_top(vectors, ids, queries, k)
    return float(np.mean([len({h.chunk_id for h in store.search_dense(space, q, k)} & e) / k
                          for q, e in zip(queries, exact)]))


def test_a_large_space_is_searched_through_its_index_file_with_exact_scores(indexed, tmp_path):
    store, vectors, ids = indexed
    assert len(list_files(index_folder(store.path), store._index("new").key)) == 1
    assert store._index("new").in_memory == 0  # everything is in the file; nothing held in memory
    queries = query_vectors(vectors, 50, seed=2)
    assert _recall(store, "new", vectors, ids, queries) >= 0.95
    hits = store.search_dense("new", queries[0], 5)
    by_id = dict(zip(ids.tolist(), vectors))
    for hit in hits:  # re-scored from the stored float32 vectors, not the index's int8 ones
        assert hit.score == pytest.approx(float(by_id[hit.chunk_id] @ queries[0]), abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_writes_to_another_space_are_not_read_and_new_writes_are_read_alone(indexed, tmp_path):
    store, vectors, ids = indexed
    query = query_vectors(vectors, 1, seed=3)[0]
    store.search_dense("new", query, 10)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    with open_store(str(store.path), settings=SMALL) as writer:  # another connection, as another process would
        other = _fill(writer, "old", corpus_vectors(200, DIM, seed=4), doc="other")
    store.search_dense("new", query, 10)
    reads = [s for s in statements if "seq >" in s]
    assert reads == [], "a write to another space made this one read vectors again"
    # A vector written to the searched space is read alone (seq > what was loaded) and found at once.
    target = vectors[0] * -1.0
    with open_store(str(store.path), settings=SMALL) as writer:
        writer.put_vectors("new", [VectorRow(int(other[0]), target)])
    statements.clear()
    assert store.search_dense("new", target, 1)[0].chunk_id == other[0]
    assert store._index("new").in_memory == 1
    assert any("seq >" in s for s in statements)


def test_deleted_and_rewritten_vectors_are_never_returned_stale(indexed):
    store, vectors, ids = indexed
    doomed = store.search_dense("new", vectors[5], 1)[0].chunk_id
    assert doomed == ids[5]
    store.delete_document("doc-0")  # chunks 0..999, in the index file
    assert all(h.chunk_id not in set(ids[:1000].tolist()) for h in store.search_dense("new", vectors[5], 10))
    flipped = -vectors[2000]
    store.put_vectors("new", [VectorRow(int(ids[2000]), flipped)])
    hit = store.search_dense("new", flipped, 1)[0]
    assert hit.chunk_id == ids[2000] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert all(h.chunk_id != ids[2000] for h in store.search_dense("new", vectors[2000], 3))


def test_a_growing_space_gets_a_new_index_file_that_other_processes_map(indexed, tmp_path):
    store, vectors, ids = indexed
    index = store._index("new")
    first = list_files(index_folder(store.path), index.key)
    more = corpus_vectors(SMALL.ann_delta_max + 50, DIM, seed=5, topics=50)
    added = _fill(store, "new", more, doc="more")
    store.search_dense("new", more[0], 10)  # notices the vectors past ann_delta_max: a rebuild in the background
    index._building.join(timeout=60)
    store.search_dense("new", more[0], 10)  # maps the new file; memory keeps only what the file lacks
    files = list_files(index_folder(store.path), index.key)
    assert files != first and len(files) == 1 and index.base_seq == files[0][0]
    assert index.in_memory == 0
    all_vectors, all_ids = np.concatenate([vectors, more]), np.concatenate([ids, added])
    assert _recall(store, "new", all_vectors, all_ids, query_vectors(all_vectors, 30, seed=6)) >= 0.95
    # Another process maps the same file (shared in the page cache) and answers the same.
    probe = textwrap.dedent(f"""
        import numpy as np
        from ovembed.config import StoreSettings
        from ovembed.store import open_store
        store = open_store({str(store.path)!r}, create=False, settings=StoreSettings(ann_min_vectors=1000))
        query = np.frombuffer(bytes.fromhex({more[0].tobytes().hex()!r}), np.float32)
        print([h.chunk_id for h in store.search_dense("new", query, 5)])
        print(any({str(files[0][1])!r} in line for line in open("/proc/self/maps")))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str([h.chunk_id for h in store.search_dense("new", more[0], 5)])
    assert out[1] == "True"


def test_dropping_a_space_removes_its_index_files(indexed):
    store, _, _ = indexed
    key = store._index("new").key
    store.activate("old", force=True)
    store.drop_space("new")
    assert list_files(index_folder(store.path), key) == []


def test_a_vector_is_stored_near_its_raw_size(tmp_path):
    """384 floats (1.5 KB) took a 4 KB overflow page each in the WITHOUT ROWID table of before."""
    store = open_store(str(tmp_path / "store.db"))
    store.create_space(Space("minilm", "all-MiniLM-L6-v2", "fp32", 384))
    vectors = corpus_vectors(4000, 384, seed=7)
    _fill(store, "minilm", vectors)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = dict(store.conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    store.close()
    assert pages["vectors"] <= 1.5 * vectors.nbytes, pages


def test_sparse_search_cut_short_keeps_recall_and_is_exact_when_not_cut(tmp_path):
    corpus = sparse_corpus(N, seed=8)
    queries = sparse_queries(corpus, 40, seed=9)
    dense = corpus_vectors(N, 16, seed=8)
    cut = StoreSettings(sparse_page=20, sparse_max_rows=2000, sparse_shortlist=50)
    with open_store(str(tmp_path / "store.db"), settings=cut) as store:
        store.create_space(Space("m3", "bge-m3", "int8", 16, sparse=True))
        ids = _fill(store, "m3", dense, sparse=corpus)
    exact = exact_sparse_top(corpus, ids, queries, 10)
    with open_store(str(tmp_path / "store.db"), settings=cut) as store:
        found = [store.search_sparse("m3", q, 10) for q in queries]
    recall = np.mean([len({h.chunk_id for h in f} & {i for i, _ in e}) / len(e) for f, e in zip(found, exact)])
    assert 0.9 <= recall < 1.0  # cut short (some lists are longer than 40), still found
    with open_store(str(tmp_path / "store.db")) as store:  # the default reads every list whole here: exact
        for query, expected in zip(queries, exact):
            got = store.search_sparse("m3", query, 10)
            assert [h.chunk_id for h in got] == [i for i, _ in expected]
            assert [h.score for h in got] == pytest.approx([s for _, s in expected], rel=1e-5)


def _indexes(path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_space_filled_in_bulk_gets_its_impact_index_when_built_and_searches_exactly_before(tmp_path):
    corpus = sparse_corpus(N, seed=8)
    queries = sparse_queries(corpus, 10, seed=9)
    db = tmp_path / "store.db"
    with open_store(str(db)) as store:
        store.create_space(Space("first", "bge-m3", "int8", 16, sparse=True))  # active at once: indexed at once
        store.create_space(Space("it's", "bge-m3", "int8", 16, sparse=True))  # filled beside it: not yet
        ids = _fill(store, "it's", corpus_vectors(N, 16, seed=8), sparse=corpus)
        first, filled = impact_index("first"), impact_index("it's")
        assert first in _indexes(db) and filled not in _indexes(db)
        exact = exact_sparse_top(corpus, ids, queries, 10)
        before = [store.search_sparse("it's", q, 10) for q in queries]  # one scan of the space's postings each
        store.build_index("it's")
        assert filled in _indexes(db)
        after = [store.search_sparse("it's", q, 10) for q in queries]  # the threshold algorithm, lists read whole
        for got in (before, after):
            assert [[h.chunk_id for h in hits] for hits in got] == [[i for i, _ in e] for e in exact]
            assert [h.score for hits in got for h in hits] == pytest.approx([s for e in exact for _, s in e], rel=1e-5)
        store.drop_space("it's")
        assert filled not in _indexes(db) and first in _indexes(db)


def test_a_schema_4_store_gets_an_impact_index_per_sparse_space(tmp_path):
    import sqlite3

    db = tmp_path / "store.db"
    with open_store(str(db)) as store:
        store.create_space(Space("m3", "bge-m3", "int8", 4, sparse=True))
        store.create_space(Space("dense", "minilm", "int8", 4))
        ids = _fill(store, "m3", corpus_vectors(50, 4, seed=1), sparse=sparse_corpus(50, seed=1))
    with sqlite3.connect(db) as conn:  # as schema 4 left it: one impact index over every space's postings
        conn.execute(f"DROP INDEX {impact_index('m3')}")
        conn.execute("CREATE INDEX postings_impact ON postings(space, token_id, weight DESC)")
        conn.execute("UPDATE schema_version SET version = 4")
    with open_store(str(db)) as store:
        assert store.search_sparse("m3", sparse_row(sparse_corpus(50, seed=1), 7), 1)[0].chunk_id == ids[7]
    assert impact_index("m3") in _indexes(db) and "postings_impact" not in _indexes(db)
    assert impact_index("dense") not in _indexes(db)


def test_ingest_past_the_tested_size_warns_and_points_to_postgresql(tmp_path, caplog):
    with open_store(str(tmp_path / "store.db"), settings=StoreSettings(sqlite_tested_chunks=5)) as store:
        with caplog.at_level(logging.WARNING, logger="ovembed.store"):
            store.upsert_document("a", [ChunkInput(f"c{i}") for i in range(4)])
            assert not caplog.records
            store.upsert_document("b", [ChunkInput(f"c{i}") for i in range(4)])
            store.upsert_document("c", [ChunkInput("c")])
    assert len(caplog.records) == 1 and "PostgreSQL" in caplog.records[0].getMessage()


def test_spaces_index_builds_the_index_file_of_a_space_filled_row_by_row(tmp_path):
    db = str(tmp_path / "store.db")
    with open_store(db, settings=SMALL) as store:
        store.create_space(Space("first", "random", "fp32", DIM))  # the first space is active at once: no build
        _fill(store, "first", corpus_vectors(1500, DIM, seed=10))
        key = store._index("first").key
    assert list_files(index_folder(store.path), key) == []
    env = {**os.environ, "OVEMBED_STORE_ANN_MIN_VECTORS": "1000"}
    run = [sys.executable, "-m", "ovembed.cli", "spaces"]
    proc = subprocess.run([*run, "index", "first", "--db", db], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "indexed space first" in proc.stdout, proc.stderr
    assert len(list_files(index_folder(store.path), key)) == 1
    proc = subprocess.run([*run, "index", "nope", "--db", db], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "no space named 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_readme_lists_every_store_setting_and_no_other():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `OVEMBED_STORE_")]
    named = {name for row in rows for name in re.findall(r"`OVEMBED_STORE_([A-Z0-9_]+)`", row.split("|")[1])}
    assert named == {field.upper() for field in StoreSettings.model_fields}


def test_lexical_pages_past_ties_read_every_posting_once(tmp_path):
    """Postings of equal weight across page boundaries: each page starts past the last (weight, chunk id) read,
    so none is skipped or read twice (a chunk read twice would score double)."""
    with open_store(str(tmp_path / "store.db"), settings=StoreSettings(sparse_page=10)) as store:
        store.create_space(Space("m3", "bge-m3", "int8", 4, sparse=True))
        ids = _fill(store, "m3", corpus_vectors(95, 4, seed=1))
        store.put_vectors("m3", [VectorRow(int(i), np.full(4, 0.5, np.float32),
                                           {"indices": [5, 7], "values": [0.25, 0.5 if n % 3 else 0.125]})
                                 for n, i in enumerate(ids)])
        hits = store.search_sparse("m3", {"indices": [5, 7], "values": [1.0, 1.0]}, 95)
    expected = sorted(((0.25 + (0.5 if n % 3 else 0.125), int(i)) for n, i in enumerate(ids)), key=lambda s: (-s[0], s[1]))
    assert [(h.score, h.chunk_id) for h in hits] == [pytest.approx(e) for e in expected]
