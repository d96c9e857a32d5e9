"""The one mapping from error kinds to HTTP: status, headers and body shape (OpenAI's under /v1), and the
exception handlers that send every failure through it."""

from __future__ import annotations

import logging

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette import responses
from starlette.exceptions import HTTPException

from ovembed.errors import ErrorKind, OvembedError

log = logging.getLogger("ovembed.server")

STATUS = {
    ErrorKind.VALIDATION: 422,
    ErrorKind.INPUT_TOO_LONG: 413,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.MODEL_NOT_FOUND: 404,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.MODEL_INVALID: 503,
    ErrorKind.HUB_UNREACHABLE: 503,
    ErrorKind.BACKEND: 500,
    ErrorKind.GATE_FAILED: 500,
    ErrorKind.BUSY: 409,
}
RETRY_AFTER = {ErrorKind.OVERLOADED: "1", ErrorKind.UNAVAILABLE: "5"}


class JSONResponse(responses.JSONResponse):
    """orjson, with NumPy arrays serialised natively: 1024 floats in microseconds, not milliseconds.

    A JSONResponse subclass, so FastAPI documents the routes' response models in the OpenAPI schema."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(path: str, kind: ErrorKind, message: str, status: int | None = None,
                   close: bool = False) -> JSONResponse:
    """`close`: end the connection after this answer (the rest of the request will not be read)."""
    status = status or STATUS.get(kind, 500)
    headers = {"Retry-After": RETRY_AFTER[kind]} if kind in RETRY_AFTER else {}
    if close:
        headers["Connection"] = "close"
    if kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    if path.startswith("/v1/"):
        if kind is ErrorKind.VALIDATION and status == 422:
            status = 400  # OpenAI's code for invalid requests (415, 405, 408 keep their meaning)
        kind_type = "invalid_request_error" if status < 500 else "server_error"
        if kind is ErrorKind.UNAUTHORIZED:
            kind_type = "authentication_error"
        body = {"error": {"message": message, "type": kind_type, "param": None, "code": kind.value}}
    else:
        body = {"error": kind.value, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def domain_error(request: Request, exc: OvembedError) -> JSONResponse:
    return error_response(request.url.path, exc.kind, exc.message)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type:
        return error_response(request.url.path, ErrorKind.VALIDATION,
                              f"Content-Type must be application/json, not '{content_type or 'none'}'", 415)
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = errors[0].get("ctx", {}).get("error", "")
        return error_response(request.url.path, ErrorKind.VALIDATION, f"malformed JSON body: {detail}", 400)
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
        parts.append(f"{where}: {e.get('msg')}")
    return error_response(request.url.path, ErrorKind.VALIDATION, "; ".join(parts))


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # Starlette's own answers: an unknown path (404) or a wrong method (405). An unknown path is not an unknown
    # model: a client that reads `model_not_found` would look for the model instead of at its URL.
    path = request.url.path
    if exc.status_code == 404:
        shown = path if len(path) <= 200 else path[:200] + "..."  # the client's own text: echoed, bounded
        return error_response(path, ErrorKind.NOT_FOUND, f"no route {request.method} {shown} (the API: /docs, "
                              "/openapi.json)", 404)
    return error_response(path, ErrorKind.VALIDATION, str(exc.detail), exc.status_code)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(request.url.path, ErrorKind.BACKEND, f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS = {OvembedError: domain_error, RequestValidationError: invalid_request, HTTPException: http_error,
                      Exception: unexpected}
