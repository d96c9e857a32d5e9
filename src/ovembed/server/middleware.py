"""Pure ASGI middlewares, one concern each: request ids + metrics + access log, API keys, body size."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid

from ovembed.errors import ErrorKind
from ovembed.server.errors import error_response
from ovembed.server.metrics import Metrics

OPEN_PATHS = frozenset({"/health", "/metrics"})
log = logging.getLogger("ovembed.access")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class Observability:
    """Gives every request an id (X-Request-ID, kept if the client sent one), counts it by route and
    status, times it, and writes one JSON access-log line."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = (_header(scope, b"x-request-id") or uuid.uuid4().hex)[:64]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 499  # nginx's "client closed request": the client left before any answer was sent
        started = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = 500 if status == 499 else status
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"], "route": route,
                       "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )


class ApiKeys:
    """Bearer API keys on every route but /health and /metrics. Keys are compared in constant time
    (against every key, no early exit) and never logged."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        given = token.strip().encode()
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        if scheme.lower() != "bearer" or not any(matches):
            response = error_response(scope["path"], ErrorKind.UNAUTHORIZED, "a valid API key is required: "
                                      "send 'Authorization: Bearer <key>'")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413, by Content-Length or by counting what arrives, and bodies
    not fully received within `timeout_s` with 408 and a closed connection (slowloris)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 60.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = error_response(scope["path"], ErrorKind.PAYLOAD_TOO_LARGE,
                                   f"request body is larger than the limit of {self.max_bytes} bytes")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                too_slow = error_response(scope["path"], ErrorKind.VALIDATION, f"request body not received within "
                                          f"{self.timeout_s:g} s", 408, close=True)
                return await too_slow(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
