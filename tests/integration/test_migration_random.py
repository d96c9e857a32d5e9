"""The migration under fire, on both backends: 10 rounds of `reembed` killed with -9 at random points while
another process ingests, re-ingests and deletes documents (itself killed with -9 once); then the job finishes,
activation and rollback both succeed without --force, every chunk has exactly one vector in every space, and
search after the rollback answers as before the migration for the documents nobody touched."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ovembed.embedders import LocalEmbedder
from ovembed.rag import RAG, Document, read_documents
from ovembed.store import open_store

ROUNDS = 10
CHUNK = {"chunk_tokens": 64, "overlap": 8}
CHURN = textwrap.dedent("""
    import random, sys, time
    from pathlib import Path
    from ovembed.embedders import LocalEmbedder
    from ovembed.rag import RAG, Document
    from ovembed.store import open_store
    url, model, stop, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    rng, live, n = random.Random(seed), [], 0
    with open_store(url) as store:
        rag = RAG(store, LocalEmbedder(model))
        while not stop.exists():
            op = rng.random()
            if op < 0.5 or not live:
                n += 1
                live.append(f"churn-{seed}-{n}")
                doc = live[-1]
            elif op < 0.8:
                doc = rng.choice(live)
            else:
                store.delete_document(live.pop(rng.randrange(len(live))))
                continue
            words = " ".join(rng.choice(["river", "stone", "market", "engine", "garden", "winter", "signal"])
                             for _ in range(rng.randint(20, 120)))
            rag.ingest([Document(doc, f"{doc}: {words}.")], chunk_tokens=64, overlap=8)
            time.sleep(rng.uniform(0, 0.2))
""")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovembed.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _churn(url: str, model: Path, stop: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHURN, url, str(model), str(stop), str(seed)],
                            stderr=subprocess.PIPE, text=True)


def _answers(rag: RAG, queries: list[str], unchanged: set[str]) -> list[list[tuple[str, int, float]]]:
    """Each query's ranking over every chunk, restricted to the untouched documents."""
    k = rag.store.count_chunks()
    return [[(r.chunk.doc_id, r.chunk.seq, r.score) for r in rag.search(q, k=k) if r.chunk.doc_id in unchanged]
            for q in queries]


def _kill_rounds(url: str, target: Path, rng: random.Random, churn_args: tuple) -> list[float]:
    """ROUNDS runs of reembed, each killed with -9 after a random time; the churn writer is killed once too."""
    kills = []
    churn = _churn(*churn_args)
    for round_ in range(ROUNDS):
        job = subprocess.Popen([sys.executable, "-m", "ovembed.cli", "reembed", "--to", str(target), "--db", url,
                                "--batch", "4", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kills.append(round(rng.uniform(1.0, 7.0), 2))  # the model loads in ~2-3 s: some kills land before it
        time.sleep(kills[-1])
        job.kill()
        job.wait(30)
        if round_ == ROUNDS // 2:  # a writer killed mid-ingest leaves chunks pending in its own space too
            churn.kill()
            churn.wait(30)
            churn = _churn(*churn_args)
    churn_args[2].touch()  # the stop file
    _, err = churn.communicate(timeout=120)
    assert churn.returncode == 0, err
    return kills


@pytest.mark.slow
def test_reembed_killed_at_random_beside_live_writes_converges_and_rolls_back_exactly(
        store_url, shared_data, minilm_int8, tiny_m3_fp32, tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    docs = read_documents(str(shared_data / "xquad" / "en" / "corpus.jsonl"))[:30]
    queries = [d.text.split(".")[0] for d in docs[::4]]
    unchanged = {d.id for d in docs}
    with open_store(store_url) as store:
        RAG(store, LocalEmbedder(minilm_int8)).ingest(docs, **CHUNK)
        before = _answers(RAG(store, LocalEmbedder(minilm_int8)), queries, unchanged)

    kills = _kill_rounds(store_url, tiny_m3_fp32, rng, (store_url, minilm_int8, tmp_path / "stop", seed))
    finished = _cli("reembed", "--to", str(tiny_m3_fp32), "--db", store_url, "--json")
    assert finished.returncode == 0, finished.stderr
    stats = json.loads(finished.stdout)
    new = stats["space"]
    activated = _cli("spaces", "activate", new, "--db", store_url)
    assert activated.returncode == 0, activated.stderr

    with open_store(store_url) as store:  # ingest under the new model: the retained MiniLM space gets pending rows
        rag = RAG(store, LocalEmbedder(tiny_m3_fp32))
        rag.ingest([Document("after-switch", "Written while the new model is active. " * 5)], **CHUNK)
        rag.ingest([Document(docs[-1].id + "-copy", docs[-1].text)], **CHUNK)
        assert store.has_pending("minilm-int8")
    rolled_back = _cli("spaces", "activate", "minilm-int8", "--db", store_url)
    assert rolled_back.returncode == 0, rolled_back.stderr

    with open_store(store_url) as store:
        ids = {c.id for c in store.chunks_after(0, 10**7)}
        for status in store.spaces():
            assert status.complete and status.pending == 0 and status.vectors == status.chunks == len(ids), status
            assert set(store.get_dense(status.space.name, sorted(ids))) == ids  # one vector per chunk, no other
        assert store.active_space().name == "minilm-int8"
        after = _answers(RAG(store, LocalEmbedder(minilm_int8)), queries, unchanged)
    for was, now in zip(before, after, strict=True):
        assert [(d, s) for d, s, _ in now] == [(d, s) for d, s, _ in was]
        assert max(abs(a[2] - b[2]) for a, b in zip(now, was, strict=True)) < 1e-5
    print(f"\nseed {seed}; kills after {kills} s; final run wrote {stats['written']} of {stats['chunks']} chunks; "
          f"{len(ids)} chunks at the end")
