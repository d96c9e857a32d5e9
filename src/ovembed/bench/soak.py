"""`ovembed bench soak`: the service under sustained mixed load, with its checks.

`clients` threads with keep-alive connections send one text per request, back to back, for `seconds`. Lengths
come from a fixed seeded mix (mix.py); requests alternate between /v1/embeddings and /embeddings. A 503 with
Retry-After is deliberate backpressure: the client waits as told and sends the same text again; any other
failure is an error. With a model folder the soak starts `ovembed serve` itself on a free loopback port and
samples that process's RSS every second; every second it also reads /metrics (queue depth, its high-water
mark, the configured bound). It passes only if there were no errors, the queue never held more than its
bound, RSS did not grow after the warm-up (leak check) and the server is still alive."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

from ovembed.bench.common import LocalServer, machine, markdown, percentiles_ms, proc_status, start_model_server
from ovembed.bench.mix import LengthClass, Sizer, draw, length_classes, measure_sizer
from ovembed.bench.watch import health_state, leak_check, sample_server, scrape
from ovembed.client import Client
from ovembed.errors import OvembedError, validation

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ROUTES = ("/v1/embeddings", "/embeddings")


@dataclass
class SoakOptions:
    url: str | None = None
    model: Path | None = None
    pid: int | None = None
    clients: int = 64
    seconds: float = 300.0
    warmup: float | None = None  # default: 20% of the run, at most 60 s
    max_tokens: int = 8192
    seed: int = 0
    routes: tuple[str, ...] = ROUTES
    served_model: str | None = None  # the `model` field of each request
    queue_texts: int | None = None  # --model only: server settings
    batch_tokens: int | None = None
    infer_requests: int | None = None
    server_env: dict[str, str] = field(default_factory=dict)  # --model only: more settings for the server
    timeout: float = 600.0
    load_timeout: float = 300.0
    max_slope_mb_min: float = 1.0
    max_growth_pct: float = 5.0
    log: Path | None = None


@dataclass
class Tally:
    """What the clients saw; lists are appended from many threads (list.append is atomic)."""

    served: list[tuple[str, str, float, float, int]] = field(default_factory=list)  # class, route, ms, e2e ms, tokens
    backpressure: list[tuple[str, float]] = field(default_factory=list)  # class, Retry-After seconds
    errors: list[tuple[str, str]] = field(default_factory=list)  # class, what happened


# --- the clients ------------------------------------------------------------------------------------


def _client(k: int, url: str, opts: SoakOptions, classes: list[LengthClass], sizer: Sizer, tally: Tally,
            start_line: threading.Barrier) -> None:
    parts = urlsplit(url)
    rng = np.random.default_rng([opts.seed, k])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=opts.timeout)
    headers = {"Content-Type": "application/json"}
    extra = {"model": opts.served_model} if opts.served_model else {}
    start_line.wait()
    deadline = time.monotonic() + opts.seconds
    n = 0
    while time.monotonic() < deadline:
        cls, tokens = draw(rng, classes)
        request_id = k + n * opts.clients
        route = opts.routes[request_id % len(opts.routes)]
        text = sizer.text(request_id, tokens)
        key = "input" if route.startswith("/v1/") else "texts"
        body = json.dumps({key: [text], **extra}).encode()
        n += 1
        first = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                conn.request("POST", route, body, headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                tally.errors.append((cls.name, f"{route}: {type(exc).__name__}: {exc}"))
                conn.close()
                break
            now = time.perf_counter()
            if response.status == 200:
                problem, used = _check_body(route, payload)
                if problem:
                    tally.errors.append((cls.name, f"{route}: 200 but {problem}"))
                else:
                    tally.served.append((cls.name, route, (now - t0) * 1000, (now - first) * 1000, used))
                break
            retry_after = response.getheader("Retry-After")
            if response.status == 503 and retry_after is not None:
                try:
                    wait = float(retry_after)
                except ValueError:
                    tally.errors.append((cls.name, f"{route}: 503 with a bad Retry-After {retry_after!r}"))
                    break
                tally.backpressure.append((cls.name, wait))
                # Honour it: wait at least Retry-After (plus jitter, so clients do not return in lockstep).
                resume = time.monotonic() + wait * (1 + 0.5 * rng.random())
                if resume >= deadline:
                    break
                time.sleep(resume - time.monotonic())
                continue
            tally.errors.append((cls.name, f"{route}: HTTP {response.status}: {payload[:200]!r}"))
            break
    conn.close()


def _check_body(route: str, payload: bytes) -> tuple[str | None, int]:
    try:
        data = json.loads(payload)
        vectors = data["data"] if route.startswith("/v1/") else data["embeddings"]
        tokens = int(data["usage"]["prompt_tokens"])
    except (ValueError, KeyError, TypeError):
        return "the body is not an embeddings response", 0
    return (None if len(vectors) == 1 else f"{len(vectors)} vectors for one text"), tokens


# --- the run ----------------------------------------------------------------------------------------


def _start_server(opts: SoakOptions, say) -> LocalServer:
    env = {"OVEMBED_MAX_QUEUE_TEXTS": opts.queue_texts, "OVEMBED_BATCH_TOKENS": opts.batch_tokens,
           "OVEMBED_WORKERS_INFER": opts.infer_requests, "OVEMBED_LOG_LEVEL": "warning", **opts.server_env}
    return start_model_server(opts.model, env, opts.log, "soak", opts.load_timeout, say)


def run_soak(opts: SoakOptions, progress=None) -> dict:
    """Run the soak; the report has every figure and a `checks` dict of pass/fail."""
    say = progress or (lambda message: None)
    server = _start_server(opts, say) if opts.model is not None else None
    url, pid = (server.url, server.proc.pid) if server else (opts.url.rstrip("/"), opts.pid)
    try:
        with Client(url, timeout=5.0, retries=0) as control:
            state = health_state(control) if server is None else "ok"
            if state != "ok":
                raise validation(f"{url}/health is not 200 ({state}): is `ovembed serve` running and ready there?")
            return _soak(url, pid, server, control, opts, say)
    finally:
        if server is not None:
            server.stop(60)


def _calibrate(ask: Client, url: str, opts: SoakOptions, say) -> tuple[Sizer, int]:
    """The filler words' token costs from the service's /tokenize, and the longest text to send."""
    sizer, data = measure_sizer(ask, url, opts.served_model, "soak")
    max_tokens, model_max = opts.max_tokens, data.get("max_length")
    if model_max and max_tokens > model_max:
        say(f"--max-tokens {max_tokens} is above the model's max length {model_max}: using {model_max}")
        max_tokens = model_max
    return sizer, max_tokens


def _warm_up(ask: Client, sizer: Sizer, classes: list[LengthClass], opts: SoakOptions, say) -> None:
    """One text per class at its longest: the longest shapes allocate the engine's largest buffers once, before
    the leak window, so that growth is not counted as a leak."""
    say("warm-up: one text per class at its longest")
    for i, cls in enumerate(classes):
        try:
            ask.embed([sizer.text(10**9 + i, cls.high)], model=opts.served_model)
        except OvembedError as exc:
            raise validation(f"warm-up request ({cls.name}, {cls.high} tokens) failed: {exc}") from None


def _soak(url: str, pid: int | None, server: LocalServer | None, control: Client, opts: SoakOptions, say) -> dict:
    with Client(url, timeout=opts.timeout, retries=0) as ask:
        sizer, max_tokens = _calibrate(ask, url, opts, say)
        classes = length_classes(max_tokens)
        rss_idle = proc_status(pid) if pid else {}
        _warm_up(ask, sizer, classes, opts, say)
    warmup = opts.warmup if opts.warmup is not None else min(60.0, 0.2 * opts.seconds)
    tally, samples, stop = Tally(), [], threading.Event()
    start_line = threading.Barrier(opts.clients + 1)
    threads = [threading.Thread(target=_client, args=(k, url, opts, classes, sizer, tally, start_line),
                                daemon=True) for k in range(opts.clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.monotonic()
    sampler = threading.Thread(target=sample_server, args=(control, pid, stop, started, samples), daemon=True)
    sampler.start()
    say(f"{opts.clients} clients for {opts.seconds:g} s (warm-up window {warmup:g} s), texts up to {max_tokens} tokens")
    for thread in threads:
        thread.join(opts.seconds + opts.timeout + 30)
    drained = time.monotonic() - started
    stuck = sum(t.is_alive() for t in threads)
    stop.set()
    sampler.join()
    final = scrape(control) or {}  # the counters as they stand after the last answer
    status = proc_status(pid) if pid else {}
    alive = server.alive() if server is not None else psutil.pid_exists(pid) if pid else None
    end = {"rss_idle": rss_idle, "status": status, "alive": alive, "health": health_state(control), "stuck": stuck,
           "drained": drained}
    report = _report(opts, url, classes, tally, samples, warmup, max_tokens, end)
    if final:
        report["queue"]["overloaded_total"] = sum(final["ovembed_overloaded_total"].values())
        report["queue"]["high_water"] = max(final["ovembed_queue_texts_high_water"].values(), default=None)
        report["server_requests"] = final["ovembed_requests_total"]
    return report


# --- the report -------------------------------------------------------------------------------------


def _class_rows(tally: Tally, classes: list[LengthClass]) -> dict[str, dict]:
    rows = {}
    for name in [c.name for c in classes] + ["all"]:
        served = [s for s in tally.served if name in ("all", s[0])]
        rows[name] = {
            "served": len(served),
            "backpressure_503": sum(1 for b in tally.backpressure if name in ("all", b[0])),
            "errors": sum(1 for e in tally.errors if name in ("all", e[0])),
            "mean_tokens": round(float(np.mean([s[4] for s in served])), 1) if served else None,
            "max_tokens": max((s[4] for s in served), default=None),
            **percentiles_ms([s[2] for s in served]),
            "e2e_p99_ms": percentiles_ms([s[3] for s in served])["p99_ms"],
        }
    return rows


def _checks(opts: SoakOptions, tally: Tally, queue: dict, leak: dict, end: dict) -> dict[str, dict]:
    checks: dict[str, dict] = {}
    checks["no errors beyond 503 backpressure"] = {"passed": not tally.errors and not end["stuck"],
                                                   "value": f"{len(tally.errors)} errors, {end['stuck']} clients stuck"}
    checks["requests served"] = {"passed": bool(tally.served), "value": len(tally.served)}
    high_water, limit = queue["high_water"], queue["limit"]
    if high_water is not None and limit is not None:
        # One text per request: the queue may never hold more than the bound.
        checks["queue bound held"] = {"passed": high_water <= limit, "value": f"high-water {high_water:g} <= {limit:g}"}
    else:
        checks["queue bound held"] = {"passed": None, "value": "unknown: /metrics has no queue high-water gauge"}
    if leak["slope_mb_per_min"] is not None:
        grew = leak["slope_mb_per_min"] > opts.max_slope_mb_min and leak["growth_pct"] > opts.max_growth_pct
        checks["RSS flat after warm-up"] = {
            "passed": not grew, "value": f"slope {leak['slope_mb_per_min']} MB/min (limit {opts.max_slope_mb_min}), "
            f"growth {leak['growth_pct']}% (limit {opts.max_growth_pct}%); fails only if both are over"}
    else:
        checks["RSS flat after warm-up"] = {"passed": None, "value": "not measured (no server pid, or too short)"}
    alive = end["alive"]
    checks["server alive and healthy"] = {"passed": alive is not False and end["health"] == "ok",
                                          "value": f"process {'running' if alive else 'gone' if alive is False else '?'}"
                                          f", /health {end['health']}"}
    return checks


def _report(opts: SoakOptions, url: str, classes: list[LengthClass], tally: Tally, samples: list[dict], warmup: float,
            max_tokens: int, end: dict) -> dict:
    metric_rows = [s for s in samples if "queue" in s]
    queue = {"limit": next((s["limit"] for s in metric_rows if s.get("limit") is not None), None),
             "high_water": max((s["high_water"] for s in metric_rows if s.get("high_water") is not None), default=None),
             "max_sampled_depth": max((s["queue"] for s in metric_rows), default=None),
             "overloaded_total": metric_rows[-1].get("overloaded") if metric_rows else None}
    leak = leak_check(samples, warmup)
    after_warmup = next((s.get("rss_mb") for s in samples if s["t"] >= warmup and s.get("rss_mb")), None)
    status = end["status"]
    memory = {"rss_idle_mb": end["rss_idle"].get("VmRSS"), "rss_after_warmup_mb": after_warmup,
              "rss_end_mb": status.get("VmRSS"), "anon_end_mb": status.get("RssAnon"),
              "peak_rss_mb": status.get("VmHWM"), **{f"leak_{k}": v for k, v in leak.items()}}
    memory = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in memory.items()}
    checks = _checks(opts, tally, queue, leak, end)
    return {
        "url": url, "model": str(opts.model) if opts.model else None, "clients": opts.clients,
        "seconds": opts.seconds, "warmup_s": warmup, "drained_s": round(end["drained"], 1), "max_tokens": max_tokens,
        "seed": opts.seed, "classes": [c.__dict__ for c in classes],
        "routes": {r: sum(1 for s in tally.served if s[1] == r) for r in opts.routes},
        "server_settings": {"max_queue_texts": opts.queue_texts, "batch_tokens": opts.batch_tokens,
                            "workers_infer": opts.infer_requests, **opts.server_env},
        "requests": _class_rows(tally, classes), "memory": memory, "queue": queue,
        "first_errors": [e[1] for e in tally.errors[:5]], "checks": checks,
        "passed": all(c["passed"] is not False for c in checks.values()),
        "samples": samples, "machine": machine(),
    }


def soak_table(report: dict) -> str:
    table = markdown(["class", "served", "503 backpressure", "errors", "mean tokens", "max tokens", "p50 ms", "p95 ms",
                      "p99 ms", "e2e p99 ms"],
                     [[name, r["served"], r["backpressure_503"], r["errors"], r["mean_tokens"], r["max_tokens"],
                       r["p50_ms"], r["p95_ms"], r["p99_ms"], r["e2e_p99_ms"]] for name, r in report["requests"].items()])
    m, q = report["memory"], report["queue"]
    lines = [table, "", f"server RSS MB: idle {m['rss_idle_mb']}, after warm-up {m['rss_after_warmup_mb']}, end "
             f"{m['rss_end_mb']} (anon {m['anon_end_mb']}), peak {m['peak_rss_mb']}; after warm-up: min "
             f"{m.get('leak_min_mb')}, max {m.get('leak_max_mb')}, slope {m.get('leak_slope_mb_per_min')} MB/min, "
             f"growth {m.get('leak_growth_pct')}% over {m.get('leak_window_s')} s",
             f"queue: bound {q['limit']}, high-water {q['high_water']}, deepest sampled {q['max_sampled_depth']}, "
             f"503s counted by the server {q['overloaded_total']}", ""]
    for name, c in report["checks"].items():
        verdict = "PASS" if c["passed"] else "FAIL" if c["passed"] is False else "n/a "
        lines.append(f"{verdict}  {name}: {c['value']}")
    return "\n".join(lines)
