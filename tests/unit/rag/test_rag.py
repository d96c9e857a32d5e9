"""The RAG client and the migration MiniLM -> BGE-M3 layout, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_cli
from ovembed.embedders import LocalEmbedder
from ovembed.errors import OvembedError
from ovembed.rag import RAG, read_documents
from ovembed.reembed import reembed
from ovembed.store import open_store

QUERIES_DE = ["Wer war Dschingis Khan?", "Wann begann der Krieg?", "Was ist ein Museum?", "Martin Luther", "Steuern"]


def corpus(shared_data, lang: str, limit: int | None = None):
    docs = read_documents(str(shared_data / "xquad" / lang / "corpus.jsonl"))
    return docs[:limit] if limit else docs


def snapshot(rag: RAG, queries=QUERIES_DE, k=10):
    return [[(r.chunk.id, round(r.score, 5)) for r in rag.search(q, k=k)] for q in queries]


@pytest.mark.slow
def test_migration_keeps_search_unchanged_until_activation_and_rollback_restores_it(
        store_url, shared_data, minilm_embedder, tiny_embedder):
    with open_store(store_url) as store:
        old = RAG(store, minilm_embedder)
        stats = old.ingest(corpus(shared_data, "de"), chunk_tokens=200, overlap=32)
        assert stats["documents"] == 240 and stats["chunks"] > 240
        before = snapshot(old)
        chunks = store.count_chunks()

        done = threading.Event()
        job: dict = {}

        def run():
            job["stats"] = reembed(store_url, tiny_embedder, batch=16, progress=False)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        searches = 0
        while not done.is_set():  # search works during the job and answers exactly as before
            assert snapshot(old, QUERIES_DE[:2]) == before[:2]
            searches += 1
        thread.join()
        assert searches > 0
        assert job["stats"].written == chunks and job["stats"].activated is False
        assert store.count_chunks() == chunks  # no row lost or added
        ids = [c.id for c in store.chunks_after(0, 10**6)]
        assert len(ids) == len(set(ids)) == chunks
        for space in ("minilm-int8", "tiny-m3-fp32"):
            assert store.count_vectors(space) == chunks  # one vector per chunk per space (primary keys)
            assert set(store.get_dense(space, ids)) == set(ids)
        assert snapshot(old) == before  # still the old space until activation

        store.activate("tiny-m3-fp32")
        with pytest.raises(OvembedError, match="space 'tiny-m3-fp32' holds .* vectors but this model makes"):
            old.search("x")
        new = RAG(store, tiny_embedder)
        assert len(new.search("Wer war Dschingis Khan?", k=5, mode="hybrid", rerank=True)) == 5
        store.activate("minilm-int8")  # the rollback
        assert snapshot(old) == before


def _reembed_cli(db: str, model: Path, batch: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ovembed.cli", "reembed", "--to", str(model), "--db", db,
                             "--batch", str(batch), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _vectors_by_position(db: str, space: str) -> dict[tuple[str, int], np.ndarray]:
    with open_store(db) as store:
        chunks = store.chunks_after(0, 10**6)
        dense = store.get_dense(space, [c.id for c in chunks])
        return {(c.doc_id, c.seq): dense[c.id] for c in chunks if c.id in dense}


@pytest.mark.slow
def test_reembed_survives_kill_9_and_resumes_to_the_uninterrupted_result(
        store_url, tmp_path, shared_data, tiny_embedder, minilm_fp32):
    docs = corpus(shared_data, "de", 120)
    with open_store(store_url) as store:
        RAG(store, tiny_embedder).ingest(docs, chunk_tokens=120, overlap=16)
        chunks = store.count_chunks()
    target = minilm_fp32.name  # fp32: bit-stable across batch shapes, so runs can be compared exactly

    proc = _reembed_cli(store_url, minilm_fp32, batch=4)
    with open_store(store_url) as store:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            spaces = {s.space.name: s for s in store.spaces()}
            if target in spaces and spaces[target].vectors >= 30:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = store.count_vectors(target)
    assert proc.returncode == -signal.SIGKILL and 0 < killed_at < chunks

    resumed = _reembed_cli(store_url, minilm_fp32, batch=4)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    stats = json.loads(out)
    assert stats["already"] == killed_at and stats["written"] == chunks - killed_at  # nothing written twice

    clean_db = str(tmp_path / "clean.db")
    with open_store(clean_db) as store:
        RAG(store, tiny_embedder).ingest(docs, chunk_tokens=120, overlap=16)
    reembed(clean_db, LocalEmbedder(minilm_fp32), batch=4, progress=False)
    crashed, clean = _vectors_by_position(store_url, target), _vectors_by_position(clean_db, target)
    assert crashed.keys() == clean.keys() and len(crashed) == chunks
    for key in clean:
        np.testing.assert_allclose(crashed[key], clean[key], atol=1e-5)


def test_lazy_read_embeds_a_stale_chunk_once_even_with_concurrent_readers(store_url, shared_data, minilm_embedder,
                                                                          tiny_m3_fp32):
    with open_store(store_url) as store:
        RAG(store, minilm_embedder).ingest(corpus(shared_data, "de", 20), chunk_tokens=120, overlap=0)
        ids = [c.id for c in store.chunks_after(0, 1000)]
    calls: list[int] = []
    lock = threading.Lock()
    embedder = LocalEmbedder(tiny_m3_fp32)
    real = embedder.vectors

    def counting(chunks):
        with lock:
            calls.extend(c.id for c in chunks)
        return real(chunks)

    embedder.vectors = counting
    with open_store(store_url) as store:
        store.create_space(embedder.space)

    def reader(n):
        with open_store(store_url) as store:  # each reader its own connection, as separate processes would
            got = RAG(store, embedder).read(ids, target=embedder.space)
            assert [c.id for c in got] == ids

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(ids)  # every stale chunk embedded exactly once
    with open_store(store_url) as store:
        assert store.count_vectors(embedder.space.name) == len(ids)
        RAG(store, embedder).read(ids[:3], target=embedder.space)
    assert len(calls) == len(ids)  # reading fresh chunks embeds nothing


def _ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    for rank, doc in enumerate(ranked[:10]):
        if doc in relevant:
            return 1.0 / math.log2(rank + 2)  # one relevant document per query: the ideal DCG is 1
    return 0.0


@pytest.mark.slow
def test_full_stack_retrieval_quality_matches_the_engine_on_xquad_en(tmp_path, shared_data, minilm_embedder, minilm_int8):
    data = shared_data / "xquad" / "en"
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines()]
    qrels: dict[str, set[str]] = {}
    for line in (data / "qrels.tsv").read_text().splitlines()[1:]:
        qid, cid, _ = line.split("\t")
        qrels.setdefault(qid, set()).add(cid)
    docs = corpus(shared_data, "en")
    with open_store(str(tmp_path / "en.db")) as store:
        rag = RAG(store, minilm_embedder)
        rag.ingest(docs)
        stack = []
        for q in queries:
            ranked = list(dict.fromkeys(r.chunk.doc_id for r in rag.search(q["text"], k=30)))
            stack.append(_ndcg_at_10(ranked, qrels[q["_id"]]))
    engine = minilm_embedder.model
    doc_vecs = engine.embed([d.text for d in docs]).dense
    query_vecs = engine.embed([q["text"] for q in queries]).dense
    direct = []
    for q, vec in zip(queries, query_vecs, strict=True):
        ranked = [docs[i].id for i in np.argsort(-(doc_vecs @ vec))[:10]]
        direct.append(_ndcg_at_10(ranked, qrels[q["_id"]]))
    assert abs(np.mean(stack) - np.mean(direct)) <= 0.01, (np.mean(stack), np.mean(direct))
    assert np.mean(stack) > 0.9  # published fp32 nDCG@10 for MiniLM on XQuAD en: 0.944


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ovembed.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_bad_input_is_refused_before_anything_is_written(tmp_path, minilm_int8):
    db = str(tmp_path / "x.db")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.md").write_text("a good document")
    (folder / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    cases = [
        ([str(tmp_path / "missing.txt")], "no such file"),
        ([str(bad)], "not UTF-8"),
        ([str(jsonl)], 'line 2: needs "id"'),
        ([str(folder)], "not UTF-8"),
    ]
    for args, message in cases:
        proc = run_cli("ingest", *args, "--db", db, "--model", minilm_int8)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not Path(db).exists() or open_store(db).count_chunks() == 0


def test_empty_documents_are_skipped_and_reingest_updates(tmp_path, minilm_int8):
    db = str(tmp_path / "x.db")
    rows = [{"id": "a", "text": "first version"}, {"id": "b", "text": "  "}, {"id": "c", "text": "third"}]
    stdin = "\n".join(json.dumps(r) for r in rows)
    proc = _cli("ingest", "-", "--db", db, "--model", str(minilm_int8), "--json", stdin=stdin)
    assert json.loads(proc.stdout) == {"documents": 2, "chunks": 2, "empty": 1}
    proc = _cli("ingest", "-", "--db", db, "--model", str(minilm_int8), stdin='{"id": "a", "text": "second version"}')
    assert proc.returncode == 0
    hits = json.loads(_cli("search", "second version", "--db", db, "--model", str(minilm_int8), "--json").stdout)
    assert [h["doc_id"] for h in hits].count("a") == 1 and hits[0]["text"] == "second version"


def test_a_database_that_does_not_answer_is_a_clear_error(tmp_path, minilm_int8):
    doc = tmp_path / "d.txt"
    doc.write_text("hello")
    proc = _cli("ingest", str(doc), "--db", "postgresql://app:s3cret@127.0.0.1:1/rag", "--model", str(minilm_int8))
    assert proc.returncode == 1 and "cannot connect to PostgreSQL" in proc.stderr
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_spaces_cli_lists_activates_and_drops(tmp_path, shared_data, minilm_int8, tiny_m3_fp32):
    db = str(tmp_path / "s.db")
    assert _cli("ingest", str(shared_data / "xquad" / "de" / "corpus.jsonl"), "--db", db, "--model",
                str(minilm_int8)).returncode == 0
    spaces = json.loads(_cli("spaces", "list", "--db", db, "--json").stdout)
    assert [(s["name"], s["active"], s["complete"]) for s in spaces] == [("minilm-int8", True, True)]
    with open_store(db) as store:
        store.create_space(LocalEmbedder(tiny_m3_fp32).space)
    proc = _cli("spaces", "activate", "tiny-m3-fp32", "--db", db, "--max-catch-up", "10")  # a whole migration
    assert proc.returncode == 2 and "incomplete" in proc.stderr and "ovembed reembed" in proc.stderr
    proc = _cli("spaces", "activate", "tiny-m3-fp32", "--db", db, "--max-catch-up", "0")  # no model: no catch-up
    assert proc.returncode == 2 and "incomplete" in proc.stderr
    proc = _cli("reembed", "--to", str(tiny_m3_fp32), "--from", "minilm-int8", "--db", db, "--activate", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["activated"] is True
    assert _cli("spaces", "drop", "tiny-m3-fp32", "--db", db).returncode == 2  # the active one
    assert _cli("spaces", "activate", "minilm-int8", "--db", db).returncode == 0
    assert _cli("spaces", "drop", "tiny-m3-fp32", "--db", db).returncode == 0
    assert [s["name"] for s in json.loads(_cli("spaces", "list", "--db", db, "--json").stdout)] == ["minilm-int8"]
    os.remove(db)
