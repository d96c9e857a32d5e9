"""The batcher's lanes with real OpenVINO models: a query never waits behind a document request, documents
are never starved by queries, and no vector depends on the lane or the schedule."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ovembed import TokenBudget, load_model
from ovembed.engine.batcher import TokenBudgetBatcher


def _doc(i: int, words: int = 120) -> str:
    return " ".join(f"document{i} word{j % 37} about retrieval" for j in range(words // 3))


DOCS = [_doc(i) for i in range(24)]
QUERY = "what is a short query about retrieval"
SMALL_BATCHES = TokenBudget(tokens=512, attention=512 * 256, max_batch=8)  # about two documents per batch


class Recorder:
    """Engine calls and finishing requests, in the order they happened."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.first_dispatch = threading.Event()
        self._lock = threading.Lock()

    def dispatched(self, sequences: int, tokens: int) -> None:
        with self._lock:
            self.events.append(f"call:{sequences}")
        self.first_dispatch.set()

    def finished(self, name: str):
        def done(_future) -> None:
            with self._lock:
                self.events.append(f"done:{name}")
        return done


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_query_sent_while_documents_run_finishes_before_them(minilm_int8, lanes):
    model = load_model(minilm_int8, budget=SMALL_BATCHES, lanes=lanes)
    recorder = Recorder()
    batcher = TokenBudgetBatcher(model, on_dispatch=recorder.dispatched)
    try:
        doc_ids = model.tokenize(DOCS)
        assert sum(map(len, doc_ids)) > batcher.short_tokens  # a bulk request
        docs = batcher.submit(doc_ids, ["dense"])
        docs.add_done_callback(recorder.finished("docs"))
        assert recorder.first_dispatch.wait(60)  # the documents' first batch is in the engine
        query = batcher.submit(model.tokenize([QUERY]), ["dense"])
        query.add_done_callback(recorder.finished("query"))
        query_vector, doc_vectors = query.result(60), docs.result(120)
    finally:
        batcher.close()
    events = recorder.events
    assert events.index("done:query") < events.index("done:docs"), events
    doc_calls = [e for e in events if e.startswith("call:") and e != "call:1"]
    assert len(doc_calls) >= 10  # the documents really ran as many batches
    if lanes == 1:
        # A shared engine: the query ran between two document batches, not after all of them.
        assert events.index("call:1") < events.index("done:docs") - 1
    np.testing.assert_allclose(query_vector.normalized().dense, model.embed([QUERY]).dense, atol=1e-4)
    reference = model.embed(DOCS).dense
    np.testing.assert_allclose(doc_vectors.normalized().dense, reference, atol=1e-4)


@pytest.mark.slow  # ~20 s on 2 cores
def test_documents_are_not_starved_by_a_stream_of_queries(minilm_int8):
    model = load_model(minilm_int8, budget=SMALL_BATCHES, lanes=1)  # one engine: the lanes must take turns
    batcher = TokenBudgetBatcher(model, bulk_yield_ms=20)
    stop = threading.Event()
    answered = [0]

    def query_stream() -> None:  # back to back, always one query queued or running
        ids = model.tokenize([QUERY])
        while not stop.is_set():
            batcher.submit(ids, ["dense"]).result(60)
            answered[0] += 1

    streams = [threading.Thread(target=query_stream) for _ in range(3)]
    try:
        for thread in streams:
            thread.start()
        docs = batcher.submit(model.tokenize(DOCS), ["dense"])
        result = docs.result(120)  # raises TimeoutError if the queries starve the documents
        still_querying = not stop.is_set() and all(t.is_alive() for t in streams)
    finally:
        stop.set()
        for thread in streams:
            thread.join(60)
        batcher.close()
    assert still_querying and answered[0] > 10
    np.testing.assert_allclose(result.normalized().dense, model.embed(DOCS).dense, atol=1e-4)


def test_vectors_do_not_depend_on_the_lane_or_the_schedule(minilm_fp32, tiny_m3_fp32):
    """fp32: every vector equals one-at-a-time embedding, whichever lane and batch neighbours it had."""
    for folder, outputs in ((minilm_fp32, ["dense"]), (tiny_m3_fp32, ["dense", "sparse", "colbert"])):
        model = load_model(folder, budget=SMALL_BATCHES, lanes=2)
        texts = [QUERY, *DOCS[:6], "short one", "another short query"]
        requests = [[t] for t in texts] + [DOCS[6:14], [QUERY, "x"]]
        batcher = TokenBudgetBatcher(model, short_tokens=64)
        try:
            futures = [batcher.submit(model.tokenize(r), outputs) for r in requests]
            results = [f.result(120).normalized() for f in futures]
        finally:
            batcher.close()
        for request, result in zip(requests, results, strict=True):
            for k, text in enumerate(request):
                alone = model.embed([text], dense=True, sparse="sparse" in outputs, colbert="colbert" in outputs)
                np.testing.assert_allclose(result.dense[k], alone.dense[0], atol=1e-5)
                if "sparse" in outputs:
                    assert result.sparse[k]["indices"] == alone.sparse[0]["indices"]
                    np.testing.assert_allclose(result.sparse[k]["values"], alone.sparse[0]["values"], atol=1e-5)
                    np.testing.assert_allclose(result.colbert[k], alone.colbert[0], atol=1e-5)


def test_a_failing_bulk_batch_fails_only_its_own_requests(minilm_int8):
    model = load_model(minilm_int8, budget=SMALL_BATCHES)
    batcher = TokenBudgetBatcher(model, short_tokens=0, max_wait_ms=200)  # everything bulk, merged
    try:
        good = batcher.submit(model.tokenize(DOCS[:4]), ["dense"])
        bad = batcher.submit([[0, 10**9, 2]], ["dense"])  # an id past the vocabulary: the engine fails it
        with pytest.raises(IndexError):  # the token table lookup refuses it
            bad.result(60)
        np.testing.assert_allclose(good.result(60).normalized().dense, model.embed(DOCS[:4]).dense, atol=1e-4)
        assert batcher.alive()
    finally:
        batcher.close()


def _rss_mb(field: str = "RssAnon") -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def _mapped_rss_kb(path) -> int:
    """Resident kB of this process's mappings of one file (/proc/self/smaps)."""
    target, total, inside = str(path.resolve()), 0, False
    for line in open("/proc/self/smaps", encoding="utf-8", errors="replace"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.slow  # ~10 s: one 32 x 512 batch, then the idle wait
def test_an_idle_lane_gives_back_the_buffers_of_a_large_batch(minilm_int8):
    model = load_model(minilm_int8, lanes=1)
    batcher = TokenBudgetBatcher(model, short_tokens=0, release_tokens=2048)
    try:
        ids = [[101] + [2000 + (i + j) % 500 for j in range(510)] + [102] for i in range(32)]  # 32 x 512 tokens
        before = _rss_mb()
        first = batcher.submit(ids, ["dense"]).result(300)
        grown = _rss_mb() - before
        assert model.runtime.held_tokens >= 32 * 512 and grown > 64, grown  # OpenVINO kept buffers for that batch
        for _ in range(100):  # the lane goes idle; after IDLE_RELEASE_S it gives them back
            if model.runtime.held_tokens == 0:
                break
            threading.Event().wait(0.1)
        assert model.runtime.held_tokens == 0
        assert _rss_mb() - before < grown * 0.75  # the rest: kernels kept for that shape by the capped caches
        again = batcher.submit(ids[:4], ["dense"]).result(300)  # and the next call allocates what it needs
    finally:
        batcher.close()
    np.testing.assert_allclose(again.dense, first.dense[:4], atol=1e-4)


def test_the_mapped_weights_leave_rss_after_loading(minilm_int8):
    from ovembed.manifest import MODEL_BIN

    model = load_model(minilm_int8)
    weights = minilm_int8 / MODEL_BIN
    assert weights.stat().st_size > 10 * 2**20
    assert _mapped_rss_kb(weights) < 2048  # dropped after the warm-up call (it was the whole file before)
    vectors = model.embed(DOCS[:3]).dense  # still right: nothing read later is lost
    np.testing.assert_allclose(vectors, load_model(minilm_int8).embed(DOCS[:3]).dense, atol=1e-6)


def test_a_request_with_no_texts_is_answered_at_once(minilm_int8):
    model = load_model(minilm_int8)
    batcher = TokenBudgetBatcher(model)
    try:
        result = batcher.submit([], ["dense"]).result(10)
    finally:
        batcher.close()
    assert result.dense.shape == (0, model.dimension) and result.token_counts == []
