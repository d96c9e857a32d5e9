"""The one HTTP client of a running ovembed service: health, status, embeddings, tokenize and metrics, with
retries, and the service's JSON errors turned back into `OvembedError` kinds (the inverse of server/errors.py)."""

from __future__ import annotations

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError

RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy without a backend, a busy or loading service, a gateway timeout


class _Retryable(Exception):
    """A failure worth another try: what to raise when the tries run out, and the wait the service asked for."""

    def __init__(self, error: OvembedError, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def default_model(status: dict) -> dict | None:
    """The default model's entry in a /models/status answer's models[] (its state, error, fingerprint, ...)."""
    wanted = status.get("embedding_model")
    return next((m for m in status.get("models") or [] if isinstance(m, dict) and wanted in (m.get("id"),
                                                                                              m.get("name"))), None)


def service_error(response: httpx.Response, where: str) -> OvembedError:
    """The error a service answered, with its own kind: `{"error": kind, "detail": message}`, or under /v1
    `{"error": {"code": kind, "message": message}}`. Another body (a proxy's page) or an unknown kind falls
    back on the status: 5xx UNAVAILABLE, other codes VALIDATION."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = error, body.get("detail") if isinstance(error, str) else None
    try:
        kind = ErrorKind(code)
    except ValueError:
        kind = ErrorKind.UNAVAILABLE if response.status_code >= 500 else ErrorKind.VALIDATION
    detail = message if isinstance(message, str) and message else response.text[:300]
    return OvembedError(kind, f"{where} answered HTTP {response.status_code}: {detail}")


def _unreachable(where: str, exc: httpx.TransportError) -> OvembedError:
    if isinstance(exc, httpx.ConnectError):
        why = f"cannot connect ({exc}); is `ovembed serve` running there?"
    elif isinstance(exc, httpx.TimeoutException):
        why = f"no answer within the timeout ({type(exc).__name__})"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return OvembedError(ErrorKind.UNAVAILABLE, f"cannot reach {where}: {why}")


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (its HTTP-date form is not used by ovembed, and is ignored)."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


class Client:
    """Connection errors and 502/503/504 are retried `retries` times with exponential backoff from `backoff_s`
    (or the service's Retry-After); any other 4xx/5xx raises at once, as an `OvembedError` of the service's kind."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff_s: float = 0.5):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.retries = retries
        self.backoff_s = backoff_s
        self._backoff = wait_exponential(multiplier=backoff_s)
        self._retrying = Retrying(stop=stop_after_attempt(retries + 1), wait=self._wait, reraise=True,
                                  retry=retry_if_exception_type(_Retryable))

    def _wait(self, state: RetryCallState) -> float:
        asked = state.outcome.exception().retry_after
        return asked if asked is not None else self._backoff(state)

    def _attempt(self, method: str, path: str, json: dict | None, answers: frozenset[int]) -> httpx.Response:
        where = f"{self.url}{path}"
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise _Retryable(_unreachable(where, exc)) from None
        if response.status_code < 400 or response.status_code in answers:
            return response
        error = service_error(response, where)
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(error, _retry_after(response))
        raise error

    def _send(self, method: str, path: str, json: dict | None = None,
              answers: frozenset[int] = frozenset()) -> httpx.Response:
        """The response of one call, after retries; statuses in `answers` are answers, not failures."""
        try:
            return self._retrying(self._attempt, method, path, json, answers)
        except _Retryable as exc:
            raise exc.error from None

    def _call(self, method: str, path: str, json: dict | None = None,
              answers: frozenset[int] = frozenset()) -> dict:
        response = self._send(method, path, json, answers)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OvembedError(ErrorKind.UNAVAILABLE, f"{self.url}{path} answered HTTP {response.status_code} "
                               "without a JSON object: is an ovembed service there?")
        return data

    def health(self) -> dict:
        """/health's body — `{"status": "ok" | "loading" | "error", "detail", "models": {name: state}}` — also
        when it answers 503: a loading or broken service is an answer here, not a failure to retry."""
        return self._call("GET", "/health", answers=frozenset({503}))

    def status(self) -> dict:
        return self._call("GET", "/models/status")

    def embed(self, texts: list[str], sparse: bool = False, model: str | None = None,
              truncate: bool = True) -> tuple[np.ndarray, list[SparseVector] | None, dict]:
        """(dense float32[n, dim], sparse or None, the call's usage: prompt and total tokens)."""
        body = {"texts": texts, "return_sparse": sparse, "truncate": truncate, **({"model": model} if model else {})}
        data = self._call("POST", "/embeddings", body)
        return np.asarray(data["embeddings"], dtype=np.float32), data.get("sparse"), data["usage"]

    def colbert(self, texts: list[str], model: str | None = None) -> list[np.ndarray]:
        """Multi-vector (ColBERT) outputs: float32[tokens - 1, dim] per text."""
        data = self._call("POST", "/embeddings", {"texts": texts, "return_colbert": True,
                                                   **({"model": model} if model else {})})
        return [np.asarray(v, dtype=np.float32) for v in data["colbert"]]

    def tokenize(self, texts: list[str], model: str | None = None, offsets: bool = False) -> dict:
        """Token ids (truncated to the max length) and counts; with `offsets`, every token's character span,
        never truncated (what chunking needs)."""
        body = {"texts": texts, "return_offsets": offsets, **({"model": model} if model else {})}
        return self._call("POST", "/tokenize", body)

    def metrics_text(self) -> str:
        """/metrics as the service wrote it (Prometheus text format)."""
        return self._send("GET", "/metrics").text

    def metrics(self) -> dict[str, list[Sample]]:
        """Every sample of /metrics by its name (`ovembed_requests_total`, `..._bucket`), each with its labels
        and value, parsed by prometheus_client."""
        samples: dict[str, list[Sample]] = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        return samples

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
