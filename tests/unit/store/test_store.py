"""The store contract, run against both backends: a real SQLite file and a real PostgreSQL + pgvector."""

from __future__ import annotations

import numpy as np
import pytest

from ovembed.engine.scoring import lexical_score
from ovembed.errors import OvembedError
from ovembed.store import ChunkInput, Space, VectorRow, open_store

MINI = Space("minilm-int8", "sentence-transformers/all-MiniLM-L6-v2", "int8", 8, "models/minilm-int8")
M3 = Space("bge-m3-int8", "BAAI/bge-m3", "int8", 12, "models/bge-m3-int8", sparse=True)


@pytest.fixture
def store(store_url):
    with open_store(store_url) as s:
        yield s


def unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store, n_docs=30, per_doc=4):
    ids = []
    for d in range(n_docs):
        ids += store.upsert_document(f"doc-{d}", [ChunkInput(f"doc {d} chunk {c}", {"c": c}) for c in range(per_doc)],
                                     {"title": f"Doc {d}"})
    return ids


def test_documents_chunks_and_reingest_replaces(store):
    ids = store.upsert_document("a", [ChunkInput("one"), ChunkInput("two", {"page": 2})], {"source": "x"})
    assert len(ids) == 2 and ids == sorted(ids)
    chunks = store.get_chunks(list(reversed(ids)))
    assert [c.text for c in chunks] == ["two", "one"] and chunks[0].metadata == {"page": 2} and chunks[0].seq == 1
    assert chunks[1].content_hash != chunks[0].content_hash
    store.create_space(MINI)
    store.put_vectors(MINI.name, [VectorRow(i, np.ones(8, np.float32) / np.sqrt(8)) for i in ids])
    new_ids = store.upsert_document("a", [ChunkInput("uno")])
    assert store.get_chunks(ids) == [] and [c.text for c in store.get_chunks(new_ids)] == ["uno"]
    assert store.count_chunks() == 1 and store.count_vectors(MINI.name) == 0  # old vectors went with old chunks
    store.delete_document("a")
    assert store.count_chunks() == 0


def test_first_space_is_active_and_spaces_are_idempotent(store):
    store.create_space(MINI)
    store.create_space(MINI)
    store.create_space(M3)
    statuses = {s.space.name: s for s in store.spaces()}
    assert statuses[MINI.name].active and not statuses[M3.name].active
    assert statuses[M3.name].space == M3
    assert store.active_space() == MINI
    with pytest.raises(OvembedError, match="holds vectors of another model.*--space NEW_NAME"):
        store.create_space(Space(MINI.name, "other", "fp32", 16))


def test_put_vectors_is_idempotent_and_validated(store):
    ids = fill(store, 3, 2)
    store.create_space(MINI)
    rows = [VectorRow(i, unit(np.random.default_rng(i), 1, 8)[0]) for i in ids]
    assert store.put_vectors(MINI.name, rows) == len(ids)
    store.put_vectors(MINI.name, rows)
    assert store.count_vectors(MINI.name) == len(ids)
    np.testing.assert_allclose(store.get_dense(MINI.name, [ids[0]])[ids[0]], rows[0].dense, atol=1e-6)
    with pytest.raises(OvembedError, match="8-dim"):
        store.put_vectors(MINI.name, [VectorRow(ids[0], np.zeros(9, np.float32))])
    with pytest.raises(OvembedError, match="NaN"):
        store.put_vectors(MINI.name, [VectorRow(ids[0], np.full(8, np.nan, np.float32))])
    assert store.put_vectors(MINI.name, [VectorRow(10**9, rows[0].dense)]) == 0  # chunk gone: skipped
    assert store.count_vectors(MINI.name) == len(ids)


def test_keyset_pages_of_missing_chunks(store):
    ids = fill(store, 10, 3)
    store.create_space(MINI)
    store.put_vectors(MINI.name, [VectorRow(i, np.ones(8, np.float32) / np.sqrt(8)) for i in ids[::2]])
    seen, after = [], 0
    while page := store.chunks_after(after, 4, missing_in=MINI.name):
        seen += [c.id for c in page]
        after = page[-1].id
    assert seen == ids[1::2]
    assert [c.id for c in store.chunks_after(0, 100)] == ids


def test_activation_needs_a_complete_space_and_rollback_works(store):
    ids = fill(store, 5, 2)
    store.create_space(MINI)
    store.create_space(M3)
    store.put_vectors(MINI.name, [VectorRow(i, np.ones(8, np.float32) / np.sqrt(8)) for i in ids])
    with pytest.raises(OvembedError, match="incomplete"):
        store.activate(M3.name)
    store.put_vectors(M3.name, [VectorRow(i, np.ones(12, np.float32) / np.sqrt(12)) for i in ids[:-1]])
    store.activate(M3.name, force=True)
    assert store.active_space() == M3 and sum(s.active for s in store.spaces()) == 1
    store.activate(MINI.name)  # the rollback
    assert store.active_space() == MINI and sum(s.active for s in store.spaces()) == 1
    with pytest.raises(OvembedError, match="active"):
        store.drop_space(MINI.name)
    store.drop_space(M3.name)
    assert [s.space.name for s in store.spaces()] == [MINI.name]
    with pytest.raises(OvembedError, match="no space"):
        store.activate("nope")


def test_dense_search_is_exact_cosine_top_k(store):
    rng = np.random.default_rng(0)
    ids = fill(store, 75, 4)
    vecs = unit(rng, len(ids), 8)
    store.create_space(MINI)
    store.put_vectors(MINI.name, [VectorRow(i, v) for i, v in zip(ids, vecs, strict=True)])
    for q in unit(rng, 5, 8):
        hits = store.search_dense(MINI.name, q, 10)
        expected = np.argsort(-(vecs @ q))[:10]
        assert [h.chunk_id for h in hits] == [ids[i] for i in expected]
        np.testing.assert_allclose([h.score for h in hits], (vecs @ q)[expected], atol=1e-5)


def test_sparse_search_ranks_by_lexical_score(store):
    rng = np.random.default_rng(1)
    ids = fill(store, 20, 3)
    store.create_space(M3)
    sparse = []
    for _ in ids:
        idx = sorted(rng.choice(50, size=int(rng.integers(1, 8)), replace=False).tolist())
        sparse.append({"indices": idx, "values": rng.uniform(0.01, 1, len(idx)).round(4).tolist()})
    store.put_vectors(M3.name, [VectorRow(i, unit(rng, 1, 12)[0], s) for i, s in zip(ids, sparse, strict=True)])
    query = {"indices": [3, 7, 11, 20], "values": [0.5, 1.0, 0.25, 0.8]}
    hits = store.search_sparse(M3.name, query, 5)
    scores = np.array([lexical_score(query, s) for s in sparse])
    top = [i for i in np.argsort(-scores, kind="stable") if scores[i] > 0][:5]
    assert sorted(h.score for h in hits)[::-1] == pytest.approx(sorted(scores[top])[::-1], abs=1e-4)
    assert {h.chunk_id for h in hits} == {ids[i] for i in top}


def test_checkpoints_and_reopening_keep_state(store_url):
    with open_store(store_url) as s:
        fill(s, 2, 2)
        s.create_space(MINI)
        assert s.get_checkpoint("job") == (0, 0)
        s.set_checkpoint("job", 42, 7)
    with open_store(store_url) as s:  # schema creation is idempotent; data persisted
        assert s.get_checkpoint("job") == (42, 7)
        assert s.count_chunks() == 4 and s.active_space() == MINI
