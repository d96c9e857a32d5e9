"""The RAG client and reembed through a running service (the --url path), and the client's retries."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ovembed.client import Client
from ovembed.embedders import LocalEmbedder, ServiceEmbedder
from ovembed.errors import ErrorKind, OvembedError
from ovembed.rag import RAG, read_documents
from ovembed.reembed import reembed
from ovembed.store import open_store


def test_ingest_and_search_through_the_service_match_in_process(server, tmp_path, shared_data, tiny_m3_fp32):
    docs = read_documents(str(shared_data / "xquad" / "de" / "corpus.jsonl"))[:30]
    remote, local = ServiceEmbedder(server.url), LocalEmbedder(tiny_m3_fp32)
    assert remote.space == local.space.__class__(**{**local.space.__dict__, "model_ref": server.url})
    with open_store(str(tmp_path / "remote.db")) as a, open_store(str(tmp_path / "local.db")) as b:
        stats_a = RAG(a, remote).ingest(docs, chunk_tokens=100, overlap=10)
        stats_b = RAG(b, local).ingest(docs, chunk_tokens=100, overlap=10)
        assert stats_a == stats_b  # the service's token offsets chunk exactly like the local tokenizer
        for mode in ("dense", "sparse", "hybrid"):
            ra = RAG(a, remote).search("Wer war Dschingis Khan?", k=5, mode=mode, rerank=mode == "hybrid")
            rb = RAG(b, local).search("Wer war Dschingis Khan?", k=5, mode=mode, rerank=mode == "hybrid")
            assert [(r.chunk.doc_id, r.chunk.seq) for r in ra] == [(r.chunk.doc_id, r.chunk.seq) for r in rb]
            np.testing.assert_allclose([r.score for r in ra], [r.score for r in rb], atol=1e-4)


def test_reembed_to_a_service_url(server, tmp_path, shared_data, minilm_int8):
    db = str(tmp_path / "r.db")
    with open_store(db) as store:
        RAG(store, LocalEmbedder(minilm_int8)).ingest(read_documents(str(shared_data / "xquad" / "de" /
                                                                         "corpus.jsonl"))[:20])
        chunks = store.count_chunks()
    stats = reembed(db, ServiceEmbedder(server.url), batch=8, activate=True, progress=False)
    assert stats.written == chunks and stats.activated
    with open_store(db) as store:
        assert store.active_space().model_ref == server.url and store.count_vectors(stats.space) == chunks


def test_client_retries_then_fails_clearly_when_nothing_listens():
    client = Client("http://127.0.0.1:9", retries=2, backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(OvembedError) as info:
        client.embed(["x"])
    assert info.value.kind is ErrorKind.UNAVAILABLE and "cannot reach http://127.0.0.1:9" in str(info.value)
    assert 0.1 <= time.monotonic() - started < 10  # two backoffs (0.05 + 0.1 s), then the error


def test_client_reports_the_services_own_4xx_message(server):
    with pytest.raises(OvembedError, match="no sparse output"):
        Client(server.url).embed(["x"], sparse=True, model="sentence-transformers/all-MiniLM-L6-v2")
