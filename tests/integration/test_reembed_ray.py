"""The Ray re-embedding job against the local one: a real local Ray, real PostgreSQL, real model folders."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from ovembed.embedders import LocalEmbedder
from ovembed.errors import ErrorKind, OvembedError
from ovembed.rag import RAG, read_documents
from ovembed.reembed import reembed
from ovembed.reembed.job import job_name
from ovembed.reembed.ray_backend import fitting_cpus, reembed_ray
from ovembed.reembed.ray_ranges import RangeLedger, missing_ranges, windows
from ovembed.store import Space, open_store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module's runs (reembed_ray joins it), shut down so later tests never see it."""
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


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
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


@pytest.mark.usefixtures("local_ray")
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


@pytest.mark.slow  # waits out the actors' start
@pytest.mark.usefixtures("local_ray")
def test_actors_with_no_room_on_the_cluster_fail_the_job_with_a_message_and_lose_nothing(tmp_path, shared_data,
                                                                                        minilm_int8, tiny_m3_fp32):
    db = str(tmp_path / "store.db")
    chunks = _ingest(db, minilm_int8, read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:6])

    with pytest.raises(OvembedError) as failed:  # 4 CPUs an actor, on a 2-CPU cluster
        reembed_ray(db, str(tiny_m3_fp32), batch=4, actors=1, actor_cpus=4, actors_start_s=3, progress=False)

    assert failed.value.kind == ErrorKind.UNAVAILABLE
    assert "did not start 1 actor(s) of 4 CPU(s) each within 3 s" in failed.value.message
    assert "[2] CPUs" in failed.value.message and "Lower --actors or --actor-cpus" in failed.value.message
    with open_store(db) as store:  # MiniLM's space untouched and still the active one
        active = store.active_space()
        assert active.dimension == 384 and store.count_vectors(active.name) == chunks
    stats = reembed_ray(db, str(tiny_m3_fp32), batch=4, actors=1, actor_cpus=2, progress=False)  # room: it goes on
    assert stats.written + stats.already == chunks


class ConnectionKiller(threading.Thread):
    """Once the job has checkpointed a range: locks the chunks table, so the actors' next statements wait on it,
    terminates the backends waiting (connections lost mid-statement, which no pool check can hide), and lets go.
    Throughout, checks that the checkpoint never passes a chunk still pending."""

    def __init__(self, db: str, space: str):
        super().__init__(daemon=True)
        self.db, self.job, self.space = db, job_name(space), space
        self.terminated = 0
        self.violations: list[tuple[int, int]] = []  # (checkpoint last id, a pending id at or below it)
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn, psycopg.connect(self.db) as locker:
            while not self.stop.wait(0.02):
                last_id = self._check(conn)
                if last_id and not self.terminated:
                    locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
                    self.terminated = self._terminate_waiting(conn)
                    locker.rollback()

    def _check(self, conn) -> int:
        # The checkpoint first: pending rows only go away, so one found at or below it was pending then too.
        row = conn.execute("SELECT last_id FROM checkpoints WHERE job = %s", (self.job,)).fetchone()
        last_id = row[0] if row else 0
        (first_pending,) = conn.execute("SELECT min(chunk_id) FROM pending WHERE space = %s", (self.space,)).fetchone()
        if first_pending is not None and first_pending <= last_id:
            self.violations.append((last_id, first_pending))
        return last_id

    @staticmethod
    def _terminate_waiting(conn, actors: int = 2, wait_s: float = 10.0) -> int:
        """Terminate the backends waiting on a lock (not the driver's: it holds the job's advisory lease)."""
        waiting = ("FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid "
                   "NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")
        deadline = time.monotonic() + wait_s
        while conn.execute(f"SELECT count(*) {waiting}").fetchone()[0] < actors and time.monotonic() < deadline:
            time.sleep(0.02)
        return conn.execute(f"SELECT count(pg_terminate_backend(pid)) {waiting}").fetchone()[0]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_ray_reembed_retries_the_ranges_of_actors_whose_connections_were_lost(postgres_db, shared_data,
                                                                              minilm_int8, tiny_m3_fp32):
    chunks = _ingest(postgres_db, minilm_int8, read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:40])
    space = tiny_m3_fp32.name
    killer = ConnectionKiller(postgres_db, space)
    killer.start()
    try:
        stats = reembed_ray(postgres_db, str(tiny_m3_fp32), batch=2, actors=2, progress=False)
    finally:
        killer.stop.set()
        killer.join()

    assert killer.terminated >= 1 and stats.retries >= 1, (killer.terminated, stats)  # lost mid-job, ridden out
    assert (stats.written, stats.chunks) == (chunks, chunks)  # each chunk's vector written once
    assert killer.violations == []
    with open_store(postgres_db) as store:
        assert store.count_vectors(space) == chunks and not store.has_pending(space)
        assert store.get_checkpoint(job_name(space)) == (store.chunks_after(0, 100_000)[-1].id, chunks)


def test_the_checkpoint_waits_for_a_range_finished_out_of_order(tmp_path, shared_data, minilm_int8):
    db = str(tmp_path / "store.db")
    chunks = _ingest(db, minilm_int8, read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:10])
    with open_store(db) as store:
        store.create_space(Space("other", "some/model", "fp32", 8))  # every chunk pending in it
        ranges = list(missing_ranges(store, "other", 2))
        ids = [c.id for c in store.chunks_after(0, 100_000)]
    assert [(r.lo, r.hi) for r in ranges] == [(ids[i], ids[min(i + 1, chunks - 1)]) for i in range(0, chunks, 2)]
    assert [r.seq for r in ranges] == list(range(len(ranges))) and len(ranges) >= 4
    assert [len(w) for w in windows(ranges, 3)] == [3] * (len(ranges) // 3) + [len(ranges) % 3] * (len(ranges) % 3 > 0)
    ledger = RangeLedger()
    ledger.add(ranges)

    assert ledger.finish(2) is None and ledger.finish(1) is None  # the first range still runs
    assert ledger.finish(0) == ranges[2].hi  # all three done: past the third at once
    assert ledger.finish(3) == ranges[3].hi
    assert (ledger.finished, ledger.listed) == (4, len(ranges))


def test_actors_get_the_most_cpus_that_still_fit_them_all():
    assert fitting_cpus([1.0, 1.0], 2) == 1
    assert fitting_cpus([8.0, 2.0], 2) == 4  # 2 actors of 4 on the 8-CPU node
    assert fitting_cpus([3.0, 3.0], 3) == 1  # 2 CPUs each would fit only two
    assert fitting_cpus([16.0], 2) == 8
    assert fitting_cpus([2.0], 5) == 1
