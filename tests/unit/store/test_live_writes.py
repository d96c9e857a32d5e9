"""The migration under live writes (issue 14's findings), on a real SQLite file and a real PostgreSQL + pgvector:
late-committing ingest, DDL beside open ingest transactions, one reembed job per space, drop vs activate, and
no counting on the search path. Each test fails on the store before pending rows, leases and the atomic switch."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ovembed.errors import ErrorKind, OvembedError
from ovembed.rag import RAG, Document
from ovembed.reembed import reembed
from ovembed.store import ChunkInput, Space, VectorRow, open_store

OLD = Space("old", "test/old-model", "fp32", 8, "models/old")


def vectors_for(space: Space):
    """A deterministic stand-in model for the old space: a unit vector from each chunk's text."""

    def compute(chunks):
        rows = []
        for c in chunks:
            v = np.random.default_rng(int(c.content_hash[:8], 16)).standard_normal(space.dimension).astype(np.float32)
            rows.append(VectorRow(c.id, v / np.linalg.norm(v)))
        return rows

    return compute


def seeded(url: str, docs: int = 12) -> list[int]:
    """A store whose active space 'old' is complete: `docs` documents of 3 chunks."""
    with open_store(url) as store:
        store.create_space(OLD)
        ids = []
        for d in range(docs):
            ids += store.upsert_document(f"doc-{d}", [ChunkInput(f"document {d}, part {p}") for p in range(3)])
        store.put_vectors("old", vectors_for(OLD)(store.chunks_after(0, 10**6)))
        return ids


def fill(store, space: Space) -> None:
    """Write every missing vector of `space` (with the stand-in model), through the contract's oldest calls."""
    store.put_vectors(space.name, vectors_for(space)(store.chunks_after(0, 10**6, missing_in=space.name)))


def all_ids(store) -> list[int]:
    return [c.id for c in store.chunks_after(0, 10**6)]


class LateIngest(threading.Thread):
    """An ingest whose chunks are inserted (their ids handed out) but whose transaction commits only when told:
    PostgreSQL's bigserial gives ids before commit, so a slow writer's chunks land below ids already read."""

    def __init__(self, url: str, doc_id: str):
        super().__init__(daemon=True)
        self.url, self.doc_id = url, doc_id
        self.inserted, self.go = threading.Event(), threading.Event()
        self.ids: list[int] = []

    def run(self) -> None:
        with open_store(self.url) as store, store.conn.transaction():  # upsert's own becomes a savepoint
            self.ids = store.upsert_document(self.doc_id, [ChunkInput(f"{self.doc_id} text {i}") for i in range(2)])
            self.inserted.set()
            self.go.wait(60)

    def commit(self) -> None:
        self.go.set()
        self.join(30)


def test_chunks_committed_late_below_ids_already_read_are_embedded_and_block_activation(postgres_db, tiny_embedder):
    url = postgres_db
    seeded(url)
    reembed(url, tiny_embedder, batch=8, progress=False)  # the new space exists and is complete: this run resumes
    late = [LateIngest(url, f"late-{i}") for i in range(3)]
    for writer in late:
        writer.start()
        assert writer.inserted.wait(30)
    with open_store(url) as store:
        *_, above = store.upsert_document("after", [ChunkInput(f"committed at once, above the late ids {i}")
                                                    for i in range(6)])
    job: dict = {}
    runner = threading.Thread(target=lambda: job.update(stats=reembed(url, tiny_embedder, batch=2, progress=False)))
    runner.start()
    _wait_for_vector(url, tiny_embedder.space.name, above)  # the job has read past the late ids
    for i in (2, 0, 1):  # now they commit, out of id order
        late[i].commit()
        time.sleep(0.2)
    runner.join(120)
    target = job["stats"].space
    rerun = reembed(url, tiny_embedder, batch=2, progress=False)  # resumes: must have nothing left, or find it
    with open_store(url) as store:
        ids = all_ids(store)
        assert set(store.get_dense(target, ids)) == set(ids)  # every chunk, the late ones included
        assert store.space(target).complete
        store.activate(target)
    print(f"\nlate commits: first run wrote {job['stats'].written}, the rerun {rerun.written} of {len(ids)} chunks")


def _wait_for_vector(url: str, space: str, chunk_id: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with open_store(url) as store:
        while time.monotonic() < deadline:
            try:
                if store.get_dense(space, [chunk_id]):
                    return
            except OvembedError:
                pass  # the job has not made the space yet
            time.sleep(0.05)
    raise AssertionError(f"chunk {chunk_id} got no vector in {space} within {timeout} s")


def test_an_incomplete_space_is_never_activated_and_the_switch_catches_up(store_url):
    seeded(store_url, docs=4)
    new = Space("new", "test/new-model", "fp32", 6, "models/new")
    with open_store(store_url) as store:
        store.create_space(new)
        fill(store, new)
        store.upsert_document("doc-0", [ChunkInput("changed text")])  # re-ingested with the old model
        store.fill_missing("old", vectors_for(OLD), chunk_ids=all_ids(store))
        with pytest.raises(OvembedError, match="incomplete: 1 .*chunks have no vector yet"):
            store.activate("new")
        assert store.active_space().name == "old"
        store.activate("new", compute=vectors_for(new))
        statuses = {s.space.name: s for s in store.spaces()}
        assert statuses["new"].state == "active" and statuses["new"].complete
        assert statuses["old"].state == "retained" and statuses["old"].complete
        assert set(store.get_dense("new", all_ids(store))) == set(all_ids(store))


def test_creating_and_dropping_spaces_beside_open_ingest_transactions_never_holds_inserts(postgres_db):
    url = postgres_db
    seeded(url, docs=2)
    with open_store(url) as store:
        store.create_space(Space("doomed", "test/doomed", "fp32", 4, "models/doomed"))
    held = LateIngest(url, "held-open")
    held.start()
    assert held.inserted.wait(30)
    made = threading.Thread(target=lambda: open_store(url).create_space(Space("new", "test/new", "fp32", 6, "m/new")))
    made.start()
    probe_url = url + ("&" if "?" in url else "?") + "options=-c%20lock_timeout%3D2000"
    with open_store(probe_url) as probe:
        started = time.perf_counter()
        probe.upsert_document("while-creating", [ChunkInput("inserted while a space is created")])
        probe.drop_space("doomed")
        probe.upsert_document("after-drop", [ChunkInput("inserted after a drop")])
        took = time.perf_counter() - started
    assert took < 1.5, f"inserts and the drop waited {took:.1f} s behind the open ingest transaction"
    time.sleep(0.3)
    assert made.is_alive()  # the new space waits for the open ingest, so its chunks get pending rows too
    held.commit()
    made.join(30)
    with open_store(url) as store:
        missing = {c.id for c in store.pending_chunks("new", 0, 10**6)}
        assert missing == set(all_ids(store))  # every chunk, the one committed after the space was made included
        assert [s.space.name for s in store.spaces()] == ["old", "new"]


def test_a_second_reembed_job_on_the_same_space_says_so_and_exits_cleanly(store_url, tiny_m3_fp32, tiny_embedder):
    seeded(store_url, docs=3)
    space = reembed(store_url, tiny_embedder, batch=4, progress=False).space  # the space exists, complete
    with open_store(store_url) as store:
        store.upsert_document("new-doc", [ChunkInput("one more chunk")])
        with store.reembed_lease(space):  # a job holding the space
            with pytest.raises(OvembedError) as caught:
                reembed(store_url, tiny_embedder, batch=4, progress=False)
            assert caught.value.kind is ErrorKind.BUSY
            proc = subprocess.run([sys.executable, "-m", "ovembed.cli", "reembed", "--to", str(tiny_m3_fp32),
                                   "--db", store_url, "--json"], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 5 and "another reembed job is filling space" in proc.stderr
            assert "Traceback" not in proc.stderr
            assert store.has_pending(space)  # the second job did nothing
        assert reembed(store_url, tiny_embedder, batch=4, progress=False).written == 1  # the lease is free again


def test_concurrent_index_builds_do_not_fail(postgres_db):
    url = postgres_db
    seeded(url, docs=20)
    new = Space("new", "test/new-model", "fp32", 6, "models/new")
    with open_store(url) as store:
        store.create_space(new)
        fill(store, new)
    stores = [open_store(url) for _ in range(2)]
    errors: list[BaseException] = []
    gate = threading.Barrier(2)

    def build(store):
        gate.wait()
        try:
            store.build_index("new")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert errors == []


def test_drop_cannot_remove_a_space_activated_between_its_check_and_its_delete(tmp_path):
    url = str(tmp_path / "race.db")
    seeded(url, docs=2)
    new = Space("new", "test/new-model", "fp32", 6, "models/new")
    with open_store(url) as dropper, open_store(url) as activator:
        dropper.create_space(new)
        fill(dropper, new)
        fired = []

        def activate_first(statement: str) -> None:  # an activation lands just as the drop's transaction begins
            if statement.startswith("BEGIN") and not fired:
                fired.append(statement)
                activator.activate("new")

        dropper.conn.set_trace_callback(activate_first)
        with pytest.raises(OvembedError, match="is the active one"):
            dropper.drop_space("new")
        dropper.conn.set_trace_callback(None)
        assert fired and dropper.active_space().name == "new"
        assert {s.space.name for s in dropper.spaces()} == {"old", "new"}


def _statements_of_search(store_url: str, rag: RAG, store, queries: list[str]) -> list[str]:
    """Every SQL statement the searches send: SQLite's trace callback, libpq's protocol trace for PostgreSQL."""
    if store_url.startswith("postgresql"):
        trace = open(f"{store_url.rsplit('/', 1)[-1].split('?')[0]}.trace", "w+")  # noqa: SIM115
        store.conn.pgconn.trace(trace.fileno())
        for q in queries:
            rag.search(q, k=3, mode="hybrid")
        store.conn.pgconn.untrace()
        trace.seek(0)
        lines = trace.read().splitlines()
        trace.close()
        return [line for line in lines if re.search(r"\tF\t\d+\t(Query|Parse)\t", "\t" + line)]  # sent by us
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    for q in queries:
        rag.search(q, k=3, mode="hybrid")
    store.conn.set_trace_callback(None)
    return statements


def test_search_counts_nothing(store_url, tiny_embedder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store(store_url) as store:
        rag = RAG(store, tiny_embedder)
        rag.ingest([Document(f"d{i}", f"Document number {i} talks about topic {i % 3}.", {}) for i in range(10)])
        store.upsert_document("late", [ChunkInput("a chunk written without its vector (a crashed ingest)")])
        statements = _statements_of_search(store_url, rag, store, ["topic one", "document"])
        assert statements, "the trace saw no statement"
        counting = [s for s in statements if re.search(r"\bcount\s*\(", s, re.IGNORECASE)]
        assert counting == [], counting
        assert not store.has_pending(tiny_embedder.space.name)  # the safety net filled the crashed ingest's chunk
