"""`ovembed.client.Client` against a scripted HTTP server on loopback: the service's JSON errors come back as
their `OvembedError` kinds (native and /v1 shapes, rendered by the server's own error mapping), 502/503/504 are
retried honouring Retry-After, other errors are raised at once, and /metrics is parsed."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from ovembed.client import Client
from ovembed.errors import ErrorKind, OvembedError
from ovembed.server.errors import error_response
from ovembed.server.metrics import Metrics

Answer = tuple[int, dict[str, str], bytes]
STATUS_OK: Answer = (200, {"content-type": "application/json"},
                     json.dumps({"embedding_model": "m", "models": []}).encode())


@dataclass
class Scripted:
    """Answers request n with answers[n]; `arrived` holds each request's (method, path, monotonic time)."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    arrived: list[tuple[str, str, float]] = field(default_factory=list)

    def gaps(self) -> list[float]:
        times = [t for _, _, t in self.arrived]
        return [b - a for a, b in zip(times, times[1:])]


@pytest.fixture
def scripted():
    script = Scripted("")

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            script.arrived.append((self.command, self.path, time.monotonic()))
            status, headers, body = script.answers.pop(0)
            self.send_response(status)
            for name, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    script.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)  # quick shutdown
    thread.start()
    yield script
    server.shutdown()
    server.server_close()


def rendered(path: str, kind: ErrorKind, message: str, **headers: str) -> Answer:
    """What the service sends for `kind` on `path` (server/errors.py), with `headers` overriding its own."""
    response = error_response(path, kind, message)
    sent = {k: v for k, v in response.headers.items() if k != "content-length"}
    return response.status_code, {**sent, **headers}, bytes(response.body)


@pytest.mark.parametrize("path", ["/embeddings", "/v1/embeddings"], ids=["native", "openai"])
@pytest.mark.parametrize("kind", list(ErrorKind), ids=[k.value for k in ErrorKind])
def test_every_error_kind_comes_back_from_the_services_json_error(scripted, kind, path):
    status, headers, body = rendered(path, kind, f"the service says {kind.value}")
    scripted.answers.append((status, headers, body))
    with Client(scripted.url, retries=0) as client, pytest.raises(OvembedError) as info:
        client.embed(["x"])
    assert info.value.kind is kind
    assert str(info.value) == f"{scripted.url}/embeddings answered HTTP {status}: the service says {kind.value}"


def test_unknown_kinds_and_foreign_bodies_fall_back_on_the_status(scripted):
    scripted.answers += [(502, {"content-type": "text/html"}, b"<html>Bad Gateway</html>"),
                         (418, {"content-type": "application/json"}, b'{"error": "teapot", "detail": "short"}'),
                         (500, {"content-type": "application/json"}, b'{"error": {"code": 7}}')]
    with Client(scripted.url, retries=0) as client:
        kinds = []
        for _ in range(3):
            with pytest.raises(OvembedError) as info:
                client.status()
            kinds.append(info.value.kind)
    assert kinds == [ErrorKind.UNAVAILABLE, ErrorKind.VALIDATION, ErrorKind.UNAVAILABLE]
    assert str(info.value).endswith('answered HTTP 500: {"error": {"code": 7}}')


def test_503_is_retried_after_the_services_retry_after_then_succeeds(scripted):
    scripted.answers += [rendered("/models/status", ErrorKind.OVERLOADED, "busy"), STATUS_OK]
    assert scripted.answers[0][1]["retry-after"] == "1"
    # A backoff of 3 s would make the wait 3 s: Retry-After (1 s) decides.
    with Client(scripted.url, retries=5, backoff_s=3.0) as client:
        assert client.status()["embedding_model"] == "m"
    assert len(scripted.arrived) == 2 and 0.95 <= scripted.gaps()[0] < 2.5


def test_without_retry_after_the_backoff_doubles_then_the_last_error_is_raised(scripted):
    scripted.answers += [(502, {}, b"")] * 2 + [rendered("/embeddings", ErrorKind.UNAVAILABLE, "loading",
                                                         **{"retry-after": "0.05"})]
    with Client(scripted.url, retries=2, backoff_s=0.2) as client, pytest.raises(OvembedError) as info:
        client.embed(["x"])
    assert info.value.kind is ErrorKind.UNAVAILABLE and str(info.value).endswith("503: loading")
    first, second = scripted.gaps()
    assert 0.2 <= first < 1.5 and 0.4 <= second < 2.5  # 0.2 s, then 0.4 s


@pytest.mark.parametrize("kind", [ErrorKind.VALIDATION, ErrorKind.UNAUTHORIZED, ErrorKind.MODEL_NOT_FOUND,
                                  ErrorKind.INPUT_TOO_LONG, ErrorKind.BACKEND], ids=lambda k: k.value)
def test_4xx_and_500_are_raised_at_once_without_retry(scripted, kind):
    scripted.answers += [rendered("/tokenize", kind, "no"), STATUS_OK]
    with Client(scripted.url, retries=5, backoff_s=0.01) as client, pytest.raises(OvembedError) as info:
        client.tokenize(["x"])
    assert info.value.kind is kind and len(scripted.arrived) == 1


def test_health_returns_the_body_of_a_loading_service_without_retrying(scripted):
    body = {"status": "loading", "detail": "models are loading", "models": {"m": "loading"}}
    scripted.answers.append((503, {"content-type": "application/json", "retry-after": "5"}, json.dumps(body).encode()))
    with Client(scripted.url, retries=5) as client:
        assert client.health() == body
    assert [(m, p) for m, p, _ in scripted.arrived] == [("GET", "/health")]


def test_metrics_are_parsed_with_prometheus_client(scripted):
    metrics = Metrics()
    metrics.overloaded.labels("m").inc(3)
    metrics.requests.labels("/embeddings", "200").inc()
    text = generate_latest(metrics.registry)
    scripted.answers += [(200, {"content-type": "text/plain; version=0.0.4"}, text)] * 2
    with Client(scripted.url) as client:
        assert client.metrics_text() == text.decode()
        samples = client.metrics()
    [overloaded] = samples["ovembed_overloaded_total"]
    assert overloaded.labels == {"model": "m"} and overloaded.value == 3
    [requests] = samples["ovembed_requests_total"]
    assert requests.labels == {"route": "/embeddings", "status": "200"} and requests.value == 1
