"""`ovembed validate`: check a running service the way the upgrade guide does — reachable, the expected
model and dimension loaded, real unit-norm embeddings, and single-query latency within a budget."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ovembed.client import Client
from ovembed.errors import ErrorKind, OvembedError
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


def failure(exc: OvembedError) -> str:
    """A failed request as a check's value: the client's message, and what to do about a missing key."""
    hint = " (pass --api-key or set OVEMBED_API_KEY)" if exc.kind is ErrorKind.UNAUTHORIZED else ""
    return f"{exc}{hint}"


def check_health(client: Client) -> Check:
    expected = "/health 200, status ok"
    try:
        health = client.health()
    except OvembedError as exc:
        return Check("reachable", False, failure(exc), expected)
    states = ", ".join(f"{k}: {v}" for k, v in (health.get("models") or {}).items())
    status = health.get("status")
    value = f"{status} ({states})" if status == "ok" else f"{status}: {health.get('detail')} ({states})"
    return Check("reachable", status == "ok", value, expected)


def fetch_status(client: Client) -> tuple[Check, dict | None]:
    expected = "parses, embedding_loaded true"
    try:
        status = client.status()
    except OvembedError as exc:
        return Check("models/status", False, failure(exc), expected), None
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


def probe_embeddings(client: Client) -> np.ndarray:
    """The dense vectors of PROBE_TEXTS, one row per text (normalized: the service's default)."""
    try:
        vectors = client.embed(list(PROBE_TEXTS))[0].astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise OvembedError(ErrorKind.BACKEND, f"/embeddings: malformed embeddings ({exc})") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(PROBE_TEXTS):
        raise OvembedError(ErrorKind.BACKEND, f"/embeddings: {len(PROBE_TEXTS)} texts gave an array of shape "
                           f"{vectors.shape}")
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


def measure_latency(client: Client, queries: int) -> list[float]:
    """Milliseconds of `queries` sequential one-text requests, each text different."""
    times = []
    for text in varied_texts(queries, QUERY_WORDS):
        t0 = time.perf_counter()
        client.embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    return times


def validate(url: str, expect_model: str | None = None, expect_dim: int | None = None, max_p95_ms: float = 200.0,
             queries: int = 50, api_key: str | None = None, timeout: float = 10.0) -> Report:
    report = Report(url)
    # No retries: a validator reports what the service does now, and a retried call would hide an error and
    # count its waits as latency.
    with Client(url, api_key=api_key, timeout=timeout, retries=0) as client:
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
        except OvembedError as exc:
            report.checks.append(Check("embedding", False, failure(exc), f"{len(PROBE_TEXTS)} vectors"))
            return report  # timing a failing route would only repeat its error
        report.checks += check_vectors(vectors, status.get("embedding_dimension"))
        expected = f"p95 <= {max_p95_ms:g} ms"
        try:
            times = measure_latency(client, queries)
        except OvembedError as exc:
            report.checks.append(Check("latency", False, failure(exc), expected))
            return report
    report.latency_ms = percentiles(times)
    p = report.latency_ms
    value = f"p95 {p['p95']} ms (p50 {p['p50']}, p99 {p['p99']}; {queries} queries)"
    report.checks.append(Check("latency", p["p95"] <= max_p95_ms, value, expected))
    return report
