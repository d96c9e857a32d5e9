"""The Ray re-embedding job against the local one: a real local Ray, real PostgreSQL, real model folders."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ovembed.embedders import LocalEmbedder
from ovembed.rag import RAG, read_documents
from ovembed.reembed import reembed
from ovembed.reembed.job import job_name
from ovembed.reembed.ray_backend import reembed_ray
from ovembed.store import open_store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray for the module (reembed_ray joins it), shut down so later tests never see it."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def fresh_postgres_db(postgres_server):
    """Another fresh database on the session's server (postgres_db gives one per test)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.get_uri(database=name)


def _ingest(db: str, model, docs) -> int:
    with open_store(db) as store:
        return RAG(store, LocalEmbedder(model)).ingest(docs)["chunks"]


def _vectors_by_position(db: str, space: str) -> dict[tuple[str, int], np.ndarray]:
    with open_store(db) as store:
        chunks = store.chunks_after(0, 100_000)
        dense = store.get_dense(space, [c.id for c in chunks])
    return {(c.doc_id, c.seq): dense[c.id] for c in chunks if c.id in dense}


def test_ray_reembed_reaches_the_same_final_state_as_the_local_job(postgres_db, fresh_postgres_db, shared_data,
                                                                 minilm_int8, tiny_m3_fp32):
    docs = read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:60]
    chunks = _ingest(postgres_db, minilm_int8, docs)
    assert _ingest(fresh_postgres_db, minilm_int8, docs) == chunks
    space = tiny_m3_fp32.name

    stats = reembed_ray(postgres_db, str(tiny_m3_fp32), batch=16, actors=2, num_cpus=2)
    local = reembed(fresh_postgres_db, LocalEmbedder(tiny_m3_fp32), batch=16, progress=False)

    assert (stats.space, stats.chunks, stats.written, stats.already, stats.activated) == (space, chunks, chunks, 0, False)
    assert (local.written, local.already) == (chunks, 0)
    for db in (postgres_db, fresh_postgres_db):
        with open_store(db) as store:
            assert store.count_vectors(space) == store.count_chunks() == chunks  # one per chunk (chunk_id is the key)
            assert store.chunks_after(0, 10, missing_in=space) == []
            assert store.active_space().name == minilm_int8.name  # search stays on the old space
    ray_vectors, local_vectors = _vectors_by_position(postgres_db, space), _vectors_by_position(fresh_postgres_db, space)
    assert ray_vectors.keys() == local_vectors.keys() and len(ray_vectors) == chunks
    for position, vector in ray_vectors.items():
        np.testing.assert_allclose(vector, local_vectors[position], atol=1e-5, err_msg=str(position))
    with open_store(postgres_db) as store:
        last_id = store.chunks_after(0, 100_000)[-1].id
        assert store.get_checkpoint(job_name(space)) == (last_id, chunks)  # what the local job would leave

    again = reembed_ray(postgres_db, str(tiny_m3_fp32), batch=16, actors=2, num_cpus=2)
    assert (again.written, again.already, again.activated) == (0, chunks, False)

    switched = reembed_ray(postgres_db, str(tiny_m3_fp32), batch=16, actors=2, activate=True)
    assert (switched.written, switched.activated) == (0, True)
    with open_store(postgres_db) as store:
        assert store.active_space().name == space


def test_ray_reembed_on_sqlite_fills_only_what_an_interrupted_run_left(tmp_path, shared_data, minilm_int8,
                                                                      tiny_m3_fp32):
    db = str(tmp_path / "store.db")
    chunks = _ingest(db, minilm_int8, read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:20])
    target = LocalEmbedder(tiny_m3_fp32)
    with open_store(db) as store:  # an earlier run that stopped after some vectors
        store.create_space(target.space)
        done = store.fill_missing(target.space.name, target.vectors, limit=chunks // 2)

    stats = reembed_ray(db, str(tiny_m3_fp32), batch=4, actors=2, activate=True)

    assert (stats.written, stats.already, stats.activated) == (chunks - done, done, True)
    with open_store(db) as store:
        assert store.count_vectors(target.space.name) == chunks
        assert store.active_space().name == target.space.name
