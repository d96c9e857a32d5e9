"""`ovembed validate`: check a running service the way the upgrade guide does — reachable, the expected
model and dimension loaded, real unit-norm embeddings, and single-query latency within a budget."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

from ovembed.workload import QUERY_WORDS, percentiles, varied_texts

# Short texts in several scripts: a model served with the wrong tokenizer or a broken graph shows here.
PROBE_TEXTS = (
    "BGE-M3 est un modèle d'embeddings multilingue. 多语言检索模型。Многоязычная модель.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
)


@dataclass
class Check:
    name: str
    passed: bool
    value: str
    expected: str


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)
    latency_ms: dict[str, float] | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_json(self) -> dict:
        return {"url": self.url, "passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "latency_ms": self.latency_ms}

    def table(self) -> str:
        rows = [("check", "result", "value", "expected")]
        rows += [(c.name, "ok" if c.passed else "FAIL", c.value, c.expected) for c in self.checks]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        failed = [c.name for c in self.checks if not c.passed]
        lines.append(f"PASS: {self.url} ({len(self.checks)} checks)" if self.passed
                     else f"FAIL: {self.url} ({', '.join(failed)})")
        return "\n".join(lines)


class RequestFailed(Exception):
    """A request that got no usable answer; the message says why, for a check's value column."""


def call(client: httpx.Client, method: str, path: str, body: dict | None = None) -> dict:
    """The JSON body of a 2xx answer, or RequestFailed with the status and the service's own message."""
    try:
        response = client.request(method, path, json=body)
    except httpx.ConnectError as exc:
        raise RequestFailed(f"cannot connect to {client.base_url} ({exc}): is `ovembed serve` running there?") from None
    except httpx.TimeoutException:
        raise RequestFailed(f"no answer from {client.base_url}{path} within the timeout") from None
    except httpx.TransportError as exc:
        raise RequestFailed(f"{path}: {type(exc).__name__}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code // 100 != 2:
        detail = data.get("detail") if isinstance(data, dict) else response.text[:200]
        hint = " (pass --api-key or set OVEMBED_API_KEY)" if response.status_code == 401 else ""
        raise RequestFailed(f"{path}: HTTP {response.status_code}: {detail}{hint}")
    if not isinstance(data, dict):
        raise RequestFailed(f"{path}: the answer is not a JSON object")
    return data


def check_health(client: httpx.Client) -> Check:
    expected = "/health 200, status ok"
    try:
        health = call(client, "GET", "/health")
    except RequestFailed as exc:
        return Check("reachable", False, str(exc), expected)
    states = ", ".join(f"{k}: {v}" for k, v in (health.get("models") or {}).items())
    return Check("reachable", health.get("status") == "ok", f"{health.get('status')} ({states})", expected)


def fetch_status(client: httpx.Client) -> tuple[Check, dict | None]:
    expected = "parses, embedding_loaded true"
    try:
        status = call(client, "GET", "/models/status")
    except RequestFailed as exc:
        return Check("models/status", False, str(exc), expected), None
    if not isinstance(status.get("embedding_model"), str) or not isinstance(status.get("models"), list):
        return Check("models/status", False, "missing embedding_model or models", expected), None
    loaded = status.get("embedding_loaded") is True
    value = f"{status['embedding_model']} {'loaded' if loaded else 'not loaded'} ({status.get('precision')})"
    return Check("models/status", loaded, value, expected), status


def model_names(status: dict) -> list[str]:
    """What the default model answers to: its id and, from models[], its name and aliases."""
    names = [status["embedding_model"]]
    for entry in status["models"]:
        if isinstance(entry, dict) and entry.get("id") == status["embedding_model"]:
            names += [entry.get("name"), *(entry.get("aliases") or [])]
            break
    return [n for n in dict.fromkeys(names) if n]


def check_model(status: dict, expect_model: str | None) -> Check:
    names = model_names(status)
    passed = expect_model is None or expect_model in names
    value = status["embedding_model"] + (f" (also {', '.join(names[1:])})" if len(names) > 1 else "")
    return Check("model", passed, value, expect_model or "any")


def check_dimension(status: dict, expect_dim: int | None) -> Check:
    dim = status.get("embedding_dimension")
    return Check("dimension", expect_dim is None or dim == expect_dim, str(dim), str(expect_dim or "any"))


def probe_embeddings(client: httpx.Client) -> np.ndarray:
    """The dense vectors of PROBE_TEXTS, one row per text."""
    answer = call(client, "POST", "/embeddings", {"texts": list(PROBE_TEXTS), "normalize": True})
    try:
        vectors = np.asarray(answer["embeddings"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestFailed(f"/embeddings: malformed embeddings ({exc})") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(PROBE_TEXTS):
        raise RequestFailed(f"/embeddings: {len(PROBE_TEXTS)} texts gave an array of shape {vectors.shape}")
    return vectors


def check_vectors(vectors: np.ndarray, dimension: int | None) -> list[Check]:
    """Right length, finite, unit norm, and two different texts not mapped to the same vector."""
    checks = [Check("embedding length", vectors.shape[1] == dimension, f"{vectors.shape[1]} floats",
                    f"{dimension} floats")]
    finite = bool(np.isfinite(vectors).all())
    checks.append(Check("finite values", finite, "all finite" if finite else "NaN or inf found", "all finite"))
    if not finite:
        return checks
    norms = np.linalg.norm(vectors, axis=1)
    drift = float(np.abs(norms - 1).max())
    checks.append(Check("unit norm", drift < 1e-3, f"max norm error {drift:.1e}", "< 1e-3"))
    difference = float(np.abs(vectors[0] - vectors[1]).max())
    cosine = float(vectors[0] @ vectors[1] / max(norms[0] * norms[1], 1e-12))
    checks.append(Check("distinct texts", difference > 1e-4, f"cosine {cosine:.3f}", "different vectors"))
    return checks


def measure_latency(client: httpx.Client, queries: int) -> list[float]:
    """Milliseconds of `queries` sequential one-text requests, each text different."""
    times = []
    for text in varied_texts(queries, QUERY_WORDS):
        t0 = time.perf_counter()
        call(client, "POST", "/embeddings", {"texts": [text], "normalize": True})
        times.append((time.perf_counter() - t0) * 1000)
    return times


def validate(url: str, expect_model: str | None = None, expect_dim: int | None = None, max_p95_ms: float = 200.0,
             queries: int = 50, api_key: str | None = None, timeout: float = 10.0) -> Report:
    report = Report(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
        report.checks.append(check_health(client))
        if not report.checks[-1].passed:
            return report  # nothing else can be asked of a service that is down or still loading
        status_check, status = fetch_status(client)
        report.checks.append(status_check)
        if status is None:
            return report
        report.checks += [check_model(status, expect_model), check_dimension(status, expect_dim)]
        try:
            vectors = probe_embeddings(client)
        except RequestFailed as exc:
            report.checks.append(Check("embedding", False, str(exc), f"{len(PROBE_TEXTS)} vectors"))
            return report  # timing a failing route would only repeat its error
        report.checks += check_vectors(vectors, status.get("embedding_dimension"))
        expected = f"p95 <= {max_p95_ms:g} ms"
        try:
            times = measure_latency(client, queries)
        except RequestFailed as exc:
            report.checks.append(Check("latency", False, str(exc), expected))
            return report
    report.latency_ms = percentiles(times)
    p = report.latency_ms
    value = f"p95 {p['p95']} ms (p50 {p['p50']}, p99 {p['p99']}; {queries} queries)"
    report.checks.append(Check("latency", p["p95"] <= max_p95_ms, value, expected))
    return report
