"""The HTTP service on a real loopback port with real models: routes, errors, batching, metrics."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import numpy as np
import pytest

from conftest import MINILM_ID
from ovembed.engine.scoring import colbert_score, combined_score, dense_score, lexical_score


def post(server, path, json=None, **kwargs):
    return httpx.post(server.url + path, json=json, timeout=60, **kwargs)


def test_health_is_ok_when_every_model_is_ready(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and set(r.json()["models"].values()) == {"ready"}
    assert r.headers["x-request-id"]


def test_models_status_describes_the_default_model_and_all_models(server, tiny_m3_fp32):
    body = httpx.get(server.url + "/models/status").json()
    assert body["embedding_model"] == tiny_m3_fp32.name  # a local source: the folder name
    assert body["embedding_dimension"] == 64 and body["embedding_loaded"] is True
    assert body["precision"] == "fp32" and body["max_length"] == 512
    assert body["outputs"] == ["dense", "sparse", "colbert"]
    minilm = [m for m in body["models"] if m["id"] == MINILM_ID][0]
    assert minilm["dimension"] == 384 and minilm["precision"] == "int8" and minilm["outputs"] == ["dense"]
    assert minilm["load_seconds"] > 0
    assert not any(a.startswith("/") for m in body["models"] for a in m["aliases"])  # no paths leak


def test_embeddings_match_the_engine(server, tiny_m3_model):
    texts = ["hello world", "Grüße aus Berlin", "東京", ""]
    r = post(server, "/embeddings", {"texts": texts, "return_sparse": True, "return_colbert": True})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = tiny_m3_model.embed(texts, sparse=True, colbert=True)
    np.testing.assert_allclose(body["embeddings"], expected.dense, atol=1e-5)
    assert body["dimension"] == 64 and len(body["embeddings"]) == 4
    assert [s["indices"] for s in body["sparse"]] == [s["indices"] for s in expected.sparse]
    for got, want in zip(body["colbert"], expected.colbert, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(expected.token_counts) == body["usage"]["total_tokens"]


def test_embeddings_by_hub_id_and_without_normalization(server, minilm_int8):
    r = post(server, "/embeddings", {"texts": ["a query"], "model": MINILM_ID, "normalize": False})
    assert r.status_code == 200 and r.json()["model"] == MINILM_ID and r.json()["dimension"] == 384
    vec = np.array(r.json()["embeddings"][0])
    assert abs(np.linalg.norm(vec) - 1) > 1e-3
    by_folder = post(server, "/embeddings", {"texts": ["a query"], "model": minilm_int8.name}).json()
    np.testing.assert_allclose(by_folder["embeddings"][0], vec / np.linalg.norm(vec), atol=1e-5)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ('{"texts": ', 400, "malformed JSON"),
        ({"texts": "not a list"}, 422, "texts"),
        ({"texts": [1, 2]}, 422, "texts.0"),
        ({"texts": []}, 422, "at least 1"),
        ({"texts": ["x"] * 257}, 422, "limit is 256"),
        ({"texts": ["word " * 2000], "truncate": False}, 413, "max length"),
        ({"texts": ["x"], "model": "no-such-model"}, 404, "not served here"),
        ({"texts": ["x"], "normalize": "yes"}, 422, "normalize"),
        ({"texts": ["x"], "surprise": 1}, 422, "surprise"),
        ({"texts": ["x"], "model": MINILM_ID, "return_sparse": True}, 422, "no sparse output"),
    ],
)
def test_bad_embeddings_requests_get_4xx_json_naming_the_problem(server, body, status, message):
    if isinstance(body, str):
        r = httpx.post(server.url + "/embeddings", content=body, headers={"content-type": "application/json"})
    else:
        r = post(server, "/embeddings", body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_oversized_body_wrong_content_type_and_unknown_route(server):
    big = b'{"texts": ["' + b"a" * (17 * 2**20) + b'"]}'
    r = httpx.post(server.url + "/embeddings", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = httpx.post(server.url + "/embeddings", content=b"texts=a", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json() == {"error": "not_found",
                                                 "detail": "no route GET /nope (the API: /docs, /openapi.json)"}
    assert httpx.get(server.url + "/health").status_code == 200  # still alive


def test_openai_errors_have_openai_shape(server):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError, match="dimensions=256"):
        client.embeddings.create(model=MINILM_ID, input="x", dimensions=256)
    with pytest.raises(NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    r = post(server, "/v1/embeddings", {"model": MINILM_ID, "input": []})
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]


def test_embed_sparse_has_tei_shape_and_matches_the_engine(server, tiny_m3_model):
    r = post(server, "/embed_sparse", {"inputs": ["sparse retrieval", "lexical weights"]})
    assert r.status_code == 200
    expected = tiny_m3_model.embed(["sparse retrieval", "lexical weights"], dense=False, sparse=True).sparse
    for got, want in zip(r.json(), expected, strict=True):
        assert [g["index"] for g in got] == want["indices"]
        np.testing.assert_allclose([g["value"] for g in got], want["values"], atol=1e-6)
    assert post(server, "/embed_sparse", {"inputs": "x", "model": MINILM_ID}).status_code == 422


def test_rerank_orders_by_m3_combined_score(server, tiny_m3_model):
    query, texts = "what is a vector database", ["vectors in a database", "cooking pasta", "a database of vectors", ""]
    weights = {"dense": 0.5, "sparse": 0.25, "colbert": 0.25}
    r = post(server, "/rerank", {"query": query, "texts": texts, "weights": weights, "top_n": 3, "return_text": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and [x["score"] for x in results] == sorted([x["score"] for x in results], reverse=True)
    out = tiny_m3_model.embed([query, *texts], sparse=True, colbert=True)
    for item in results:
        i = item["index"] + 1
        scores = {"dense": dense_score(out.dense[0], out.dense[i]), "sparse": lexical_score(out.sparse[0], out.sparse[i]),
                  "colbert": colbert_score(out.colbert[0], out.colbert[i])}
        assert item["score"] == pytest.approx(combined_score(scores, weights), abs=1e-5)
        assert item["text"] == texts[item["index"]]
    r = post(server, "/rerank", {"query": "q", "texts": ["a"], "weights": {"dense": 0, "sparse": 0, "colbert": 0}})
    assert r.status_code == 422


def test_tokenize_returns_ids_counts_and_truncation(server):
    r = post(server, "/tokenize", {"texts": ["hello world", "word " * 600], "model": MINILM_ID})
    body = r.json()
    assert body["max_length"] == 256 and body["counts"][1] == 256 and body["truncated"] == [False, True]
    assert body["tokens"][0][0] == 101 and body["tokens"][0][-1] == 102  # [CLS] ... [SEP]
    assert body["counts"][0] == len(body["tokens"][0])


def test_64_concurrent_clients_get_their_own_results_and_are_batched(server, tiny_m3_model):
    rng = np.random.default_rng(3)
    words = ["embedding", "Vektor", "搜索", "поиск", "recherche", "query", "passage", "🙂"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 200)))) + f" #{i}" for i in range(64)]
    expected = tiny_m3_model.embed(texts).dense
    before = _batch_counts(server, tiny_m3_model.folder.name)

    def call(i):
        with httpx.Client(timeout=60) as client:
            r = client.post(server.url + "/embeddings", json={"texts": [texts[i]]})
            return i, r

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(call, range(64)))
    for i, r in responses:
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["embeddings"][0], expected[i], atol=1e-5)
    after = _batch_counts(server, tiny_m3_model.folder.name)
    dispatches = after[0] - before[0]
    sequences = after[1] - before[1]
    assert sequences == 64 and dispatches < 64  # requests were merged into fewer engine calls


def _batch_counts(server, model: str) -> tuple[float, float]:
    """(engine dispatches, texts dispatched) so far for one model, from /metrics."""
    text = httpx.get(server.url + "/metrics").text

    def value(metric: str) -> float:
        match = re.search(rf'{metric}\{{model="{re.escape(model)}"\}} (\S+)', text)
        return float(match.group(1)) if match else 0.0

    return value("ovembed_batch_sequences_count"), value("ovembed_batch_sequences_sum")


def test_metrics_expose_requests_latency_queue_batches_tokens_and_load_time(server):
    post(server, "/embeddings", {"texts": ["metrics please"]})
    text = httpx.get(server.url + "/metrics").text
    for name in ("ovembed_requests_total", "ovembed_request_duration_seconds_bucket", "ovembed_queue_texts",
                 "ovembed_batch_sequences_bucket", "ovembed_batch_tokens_bucket", "ovembed_tokens_embedded_total",
                 "ovembed_model_load_seconds"):
        assert name in text, name
    assert re.search(r'ovembed_requests_total\{route="/embeddings",status="200"\} [1-9]', text)
    assert re.search(r'ovembed_model_load_seconds\{model="[^"]+"\} [0-9.e-]+', text)
