"""The service's life: preload on/off, readiness, broken models, API keys, backpressure, SIGTERM drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import time

import httpx
import pytest

from ovembed.bench.common import LocalServer as Server
from ovembed.config import Settings
from ovembed.server.app import create_app


def test_health_is_503_loading_until_preloaded_models_are_ready(minilm_int8):
    # The app before its start-up hook has run: models are configured but not loaded yet.
    app = create_app(Settings(models=[str(minilm_int8)], preload=True))

    async def check():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            health = await client.get("/health")
            embed = await client.post("/embeddings", json={"texts": ["x"]})
            return health, embed

    health, embed = asyncio.run(check())
    assert health.status_code == 503 and health.json()["status"] == "loading"
    assert health.headers["retry-after"] == "5"
    assert embed.status_code == 503 and "still loading" in embed.json()["detail"]


def test_missing_or_corrupt_model_is_reported_on_health_with_503(minilm_int8, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(minilm_int8, corrupt)
    (corrupt / "tokenizer.json").write_text("{}")
    with Server([tmp_path / "missing", corrupt], wait_ready=False, log=tmp_path / "log") as srv:
        r = srv.wait(lambda r: r.status_code == 503 and r.json()["status"] == "error"
                     and r.json()["models"]["corrupt"] == "error")
        detail = r.json()["detail"]
        assert "not found" in detail and "checksum" in detail
        status = httpx.post(srv.url + "/embeddings", json={"texts": ["x"], "model": "corrupt"})
        assert status.status_code == 503 and "failed to load" in status.json()["detail"]
    assert "model unavailable" in (tmp_path / "log").read_text()


def test_without_preload_models_load_on_first_use(minilm_int8, tmp_path):
    with Server([minilm_int8], env={"OPENVINO_PRELOAD_MODELS": "false"}) as srv:
        assert httpx.get(srv.url + "/health").json()["models"] == {"minilm-int8": "not_loaded"}
        assert httpx.get(srv.url + "/models/status").json()["embedding_loaded"] is False
        r = httpx.post(srv.url + "/embeddings", json={"texts": ["first use"]}, timeout=60)
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
        assert httpx.get(srv.url + "/models/status").json()["embedding_loaded"] is True


def test_api_keys_guard_every_route_but_health_and_metrics(minilm_int8, tmp_path):
    log = tmp_path / "server.log"
    with Server([minilm_int8], env={"OVEMBED_API_KEYS": "key-one,key-two"}, log=log) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-two"}):
            r = httpx.post(srv.url + "/embeddings", json={"texts": ["x"]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
        r = httpx.get(srv.url + "/models/status")
        assert r.status_code == 401
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": "x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(srv.url + "/embeddings", json={"texts": ["x"]}, headers={"Authorization": "Bearer key-two"})
        assert ok.status_code == 200
    text = log.read_text()
    assert "key-one" not in text and "key-two" not in text and "wrong" not in text


def test_full_queue_answers_503_with_retry_after(minilm_int8):
    env = {"OVEMBED_MAX_QUEUE_TEXTS": "4", "OVEMBED_BATCH_WAIT_MS": "300"}
    with Server([minilm_int8], env=env) as srv:
        def call(i):
            return httpx.post(srv.url + "/embeddings", json={"texts": [f"text {i}", "two"]}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(call, range(16)))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503}, codes
        busy = [r for r in responses if r.status_code == 503][0]
        assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
        assert httpx.get(srv.url + "/health").status_code == 200
        assert 'ovembed_overloaded_total{model="minilm-int8"}' in httpx.get(srv.url + "/metrics").text


def test_sigterm_finishes_in_flight_requests_then_exits_0(minilm_int8, tmp_path):
    # A long batcher wait keeps the request in flight when SIGTERM arrives.
    srv = Server([minilm_int8], env={"OVEMBED_BATCH_WAIT_MS": "1500"}, log=tmp_path / "log")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            pending = pool.submit(httpx.post, srv.url + "/embeddings", json={"texts": ["drain me"] * 64}, timeout=60)
            time.sleep(0.5)
            srv.proc.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200 and len(response.json()["embeddings"]) == 64
        assert time.monotonic() - started >= 1.4
        assert srv.proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/health", timeout=2)
    finally:
        srv.stop()


def test_logs_are_json_lines_with_request_ids(minilm_int8, tmp_path):
    log = tmp_path / "server.log"
    with Server([minilm_int8], log=log) as srv:
        r = httpx.post(srv.url + "/embeddings", json={"texts": ["x"]}, headers={"X-Request-ID": "trace-123"})
        assert r.headers["x-request-id"] == "trace-123"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("logger") == "ovembed.access" and e.get("request_id") == "trace-123"]
    assert access and access[0]["status"] == 200 and access[0]["route"] == "/embeddings" and access[0]["duration_ms"] > 0


def test_cors_is_off_by_default(server):
    r = httpx.options(server.url + "/embeddings", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
