"""HTTP client for an ovembed service, with retries: used by the RAG client and reembed, and by users."""

from __future__ import annotations

import time

import httpx
import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError

RETRY_STATUSES = {502, 503, 504}


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff_s: float = 0.5):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.retries = retries
        self.backoff_s = backoff_s

    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        """One call; connection errors and 502/503/504 are retried with exponential backoff
        (honouring Retry-After); other 4xx/5xx raise at once with the service's message."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if last:
                    raise OvembedError(ErrorKind.UNAVAILABLE, f"cannot reach {self.url}{path}: {exc}") from None
                time.sleep(self.backoff_s * 2**attempt)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                wait = response.headers.get("retry-after")
                time.sleep(float(wait) if wait and wait.replace(".", "", 1).isdigit() else self.backoff_s * 2**attempt)
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail") or response.text
                except ValueError:
                    detail = response.text
                kind = ErrorKind.UNAVAILABLE if response.status_code >= 500 else ErrorKind.VALIDATION
                raise OvembedError(kind, f"{self.url}{path} answered {response.status_code}: {detail}")
            return response.json()
        raise AssertionError("unreachable")

    def status(self) -> dict:
        return self._request("GET", "/models/status")

    def embed(self, texts: list[str], sparse: bool = False, model: str | None = None,
              truncate: bool = True) -> tuple[np.ndarray, list[SparseVector] | None, list[int]]:
        """(dense float32[n, dim], sparse or None, token counts). Token counts come from usage per call."""
        body = {"texts": texts, "return_sparse": sparse, "truncate": truncate, **({"model": model} if model else {})}
        data = self._request("POST", "/embeddings", body)
        return np.asarray(data["embeddings"], dtype=np.float32), data.get("sparse"), data["usage"]

    def colbert(self, texts: list[str], model: str | None = None) -> list[np.ndarray]:
        """Multi-vector (ColBERT) outputs: float32[tokens - 1, dim] per text."""
        data = self._request("POST", "/embeddings", {"texts": texts, "return_colbert": True,
                                                      **({"model": model} if model else {})})
        return [np.asarray(v, dtype=np.float32) for v in data["colbert"]]

    def tokenize(self, texts: list[str], model: str | None = None, offsets: bool = False) -> dict:
        """Token ids (truncated to the max length) and counts; with `offsets`, every token's character span,
        never truncated (what chunking needs)."""
        body = {"texts": texts, "return_offsets": offsets, **({"model": model} if model else {})}
        return self._request("POST", "/tokenize", body)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
