"""`ovembed validate`: check a running service the way the upgrade guide does — reachable, the expected
model and dimension loaded, real unit-norm embeddings, and single-query latency within a budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ovembed.client import Client, default_model
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import resolve_alias
from ovembed.workload import QUERY_WORDS, percentiles, varied_texts

DEFAULT_LOAD_TIMEOUT_S = 120.0  # BGE-M3 int8 loads in well under a minute on 2 cores; a slow disk gets the rest
POLL_S = 0.5

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
class LoadWait:
    """How long validate waits for a service that is still loading its models: from start-up (preloading) or on
    first use (--no-preload), where the validator's first request is the one that starts the load."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    def waited(self) -> float:
        return time.monotonic() - self.started

    def exceeded(self, what: str) -> str:
        return f"{what} after {self.seconds:g} s (wait longer with --load-timeout)"


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)
    latency_ms: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_json(self) -> dict:
        return {"url": self.url, "passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "latency_ms": self.latency_ms, "warnings": self.warnings}

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


def check_health(client: Client, wait: LoadWait) -> Check:
    expected = "/health 200, status ok"
    try:
        health = client.health()
        while health.get("status") == "loading" and wait.left() > 0:  # preloading: ready in a while
            time.sleep(min(POLL_S, wait.left()))
            health = client.health()
    except OvembedError as exc:
        return Check("reachable", False, failure(exc), expected)
    states = ", ".join(f"{k}: {v}" for k, v in (health.get("models") or {}).items())
    status = health.get("status")
    value = f"{status} ({states})" if status == "ok" else f"{status}: {health.get('detail')} ({states})"
    if status == "loading":
        value = wait.exceeded(f"still loading ({states})")
    return Check("reachable", status == "ok", value, expected)


def await_load(client: Client, status: dict, wait: LoadWait, wake: Callable[[float], str | None]) -> tuple[dict, str]:
    """The status once the default model has loaded, failed, or the wait ran out, and why it is not loaded
    when it is not. A model not loaded yet on a service that loads on first use is woken by one request."""
    woken = None
    while status.get("embedding_loaded") is not True:
        entry = default_model(status) or {}
        state = entry.get("state")
        if state == "error":
            return status, f"failed to load: {entry.get('error')}"
        if state not in ("not_loaded", "loading"):
            return status, "not loaded"
        if wait.left() <= 0:
            return status, wait.exceeded("not loaded" if state == "not_loaded" else "still loading")
        if state == "not_loaded" and woken is not None:
            return status, f"not loaded by a first request: {woken or 'it answered, yet the model is not loaded'}"
        if state == "not_loaded":
            woken = wake(wait.left()) or ""
        else:
            time.sleep(min(POLL_S, wait.left()))
        status = client.status()
    return status, ""


def fetch_status(client: Client, wait: LoadWait, wake: Callable[[float], str | None]) -> tuple[Check, dict | None]:
    expected = "parses, embedding_loaded true"
    def parses(status: dict) -> bool:
        return isinstance(status.get("embedding_model"), str) and isinstance(status.get("models"), list)

    try:
        status = client.status()
        loaded_at_first, why_not = status.get("embedding_loaded") is True, ""
        if parses(status):
            status, why_not = await_load(client, status, wait, wake)
    except OvembedError as exc:
        return Check("models/status", False, failure(exc), expected), None
    if not parses(status):
        return Check("models/status", False, "missing embedding_model or models", expected), None
    loaded = status.get("embedding_loaded") is True
    value = f"{status['embedding_model']} loaded ({status.get('precision')})" if loaded else \
        f"{status['embedding_model']} {why_not}"
    if loaded and not loaded_at_first:
        value += f"; waited {wait.waited():.1f} s for it to load"
    return Check("models/status", loaded, value, expected), status


def wake_on_first_use(url: str, api_key: str | None) -> Callable[[float], str | None]:
    """One embedding request, allowed `seconds` to answer: what makes a --no-preload service load its default
    model. Returns the failure, if any; the load goes on in the service after a client-side timeout."""
    def wake(seconds: float) -> str | None:
        try:
            with Client(url, api_key=api_key, timeout=seconds, retries=0) as client:
                client.embed([PROBE_TEXTS[1]])
        except OvembedError as exc:
            return failure(exc)
        return None

    return wake


def model_names(status: dict) -> list[str]:
    """What the default model answers to: its id and, from models[], its name and aliases."""
    names = [status["embedding_model"]]
    for entry in status["models"]:
        if isinstance(entry, dict) and entry.get("id") == status["embedding_model"]:
            names += [entry.get("name"), *(entry.get("aliases") or [])]
            break
    return [n for n in dict.fromkeys(names) if n]


def check_model(status: dict, expect_model: str | None, warnings: list[str]) -> Check:
    names = model_names(status)
    passed = expect_model is None or expect_model in names
    if not passed:  # a name `ovembed quantize` accepts too (BAAI/bge-m3-base), with quantize's warning
        target, warning = resolve_alias(expect_model)
        passed = target in names
        if passed and warning:
            warnings.append(warning)
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
             queries: int = 50, api_key: str | None = None, timeout: float = 10.0,
             load_timeout: float = DEFAULT_LOAD_TIMEOUT_S) -> Report:
    """`load_timeout`: seconds to wait for a service still loading its models (at start-up or on first use)."""
    report, wait = Report(url), LoadWait(load_timeout)
    # No retries: a validator reports what the service does now, and a retried call would hide an error and
    # count its waits as latency. Loading is the one state waited for, bounded, before anything is measured.
    with Client(url, api_key=api_key, timeout=timeout, retries=0) as client:
        report.checks.append(check_health(client, wait))
        if not report.checks[-1].passed:
            return report  # nothing else can be asked of a service that is down or still loading
        status_check, status = fetch_status(client, wait, wake_on_first_use(url, api_key))
        report.checks.append(status_check)
        if status is None:
            return report
        report.checks += [check_model(status, expect_model, report.warnings), check_dimension(status, expect_dim)]
        if not status_check.passed:
            return report  # a model not loaded in time is not measured: its first requests would time its load
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
