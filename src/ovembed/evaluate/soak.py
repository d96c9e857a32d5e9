"""Soak and memory: the service under sustained mixed load, and peak memory under the worst batch.

    python -m ovembed.evaluate.soak --model FOLDER [--clients 64] [--minutes 5] [--max-tokens 8192] [--json FILE]
    python -m ovembed.evaluate.soak --url http://127.0.0.1:8019 [--pid PID] ...   # a running service, loopback
    python -m ovembed.evaluate.soak memory --model FOLDER [--batch-tokens 4096,16384] [--infer-requests 1,2]

Soak: `--clients` threads with keep-alive connections send one text per request, back to back, for
`--minutes`. Lengths come from a fixed seeded mix (mostly short queries, some paragraphs, rare long
documents up to --max-tokens); requests alternate between /v1/embeddings and /embeddings. A 503 with
Retry-After is deliberate backpressure: the client waits as told and sends the same text again; any
other failure is an error. With --model the command starts `ovembed serve` itself on a free loopback
port and samples that process's RSS every second; every second it also reads /metrics (queue depth,
its high-water mark, the configured bound). Exit 0 only if there were no errors, the queue never held
more than its bound, RSS did not grow after the warm-up (leak check) and the server is still alive.

Memory: for each setting (token budget x infer requests) a child process loads the model, records
RSS idle and after warm-up, then runs the worst merged call those settings allow and records the
high-water RSS (VmHWM, reset after warm-up). It prints a table and the fitted sizing formula."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

from ovembed.evaluate.bench import machine, positive_ints, proc_status
from ovembed.workload import percentiles

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ROUTES = ("/v1/embeddings", "/embeddings")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2, no traceback."""


# --- workload ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthClass:
    name: str
    weight: float
    low: int  # tokens, inclusive
    high: int


def length_classes(max_tokens: int) -> list[LengthClass]:
    """The fixed mix: 85% queries (4-48 tokens), 14% paragraphs (64-512), 1% documents (1024-max)."""
    q_high = min(48, max_tokens)
    p_low = min(64, max_tokens)
    p_high = max(p_low, min(512, max_tokens // 2))
    d_low = max(p_high, min(1024, max_tokens // 2))
    return [LengthClass("query", 0.85, min(4, q_high), q_high), LengthClass("paragraph", 0.14, p_low, p_high),
            LengthClass("document", 0.01, d_low, max_tokens)]


def draw(rng: np.random.Generator, classes: list[LengthClass]) -> tuple[LengthClass, int]:
    """A class by weight, then a length log-uniform within it."""
    cls = classes[int(rng.choice(len(classes), p=[c.weight for c in classes]))]
    tokens = round(math.exp(rng.uniform(math.log(cls.low), math.log(cls.high + 1)))) if cls.high > cls.low else cls.low
    return cls, min(max(tokens, cls.low), cls.high)


@dataclass(frozen=True)
class Sizer:
    """Token costs of the filler words and of the leading number, measured with the service's /tokenize."""

    word_tokens: tuple[int, ...]  # per word of validate.WORDS, without [CLS]/[SEP]
    number_tokens: int  # most tokens a leading request number takes

    def text(self, request_id: int, tokens: int) -> str:
        """A text of at most `tokens` tokens ([CLS] and [SEP] included; at least one word), unique by its number."""
        from ovembed.workload import WORDS

        budget = tokens - 2 - self.number_tokens
        stride = 1 + request_id % 5
        words, used, j = [], 0, 0
        while True:
            w = (request_id * 7 + j * stride) % len(WORDS)
            if words and used + self.word_tokens[w] > budget:
                break
            words.append(WORDS[w])
            used += self.word_tokens[w]
            j += 1
        return f"{request_id} " + " ".join(words)


# --- the server under test --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`ovembed serve` for one model folder on a free loopback port, output to a log file."""

    def __init__(self, folder: Path, env: dict[str, str], log: Path, timeout: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OVEMBED_", "OPENVINO_PRELOAD"))}
        full_env.update({"OVEMBED_MODELS": str(folder), "OVEMBED_PORT": str(self.port), "OVEMBED_HOST": "127.0.0.1",
                         **env})
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ovembed.cli", "serve"], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise UsageError(f"ovembed serve exited with {self.proc.returncode}: {self.tail()}")
            if _get(self.url, "/health")[0] == 200:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise UsageError(f"ovembed serve was not ready within {timeout:g} s: {self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else "(no output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _get(url: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def _post_json(url: str, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict | None]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, None
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """{metric name: {label: value}} for the queue gauges and the 503 counter (label: the model), and for
    the request counter (label: "route status")."""
    wanted = ("ovembed_queue_texts", "ovembed_queue_texts_high_water", "ovembed_queue_limit_texts",
              "ovembed_overloaded_total", "ovembed_requests_total")
    out: dict[str, dict[str, float]] = {name: {} for name in wanted}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in out and "} " in rest:
            labels, value = rest.rsplit("} ", 1)
            found = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
            found = {k.strip(): v.strip().strip('"') for k, v in found.items()}
            model = found.get("model") or f"{found.get('route', '')} {found.get('status', '')}"
            try:
                out[name][model] = float(value)
            except ValueError:
                pass
    return out


# --- the soak ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw; lists are appended from many threads (list.append is atomic)."""

    served: list[tuple[str, str, float, float, int]] = field(default_factory=list)  # class, route, ms, e2e ms, tokens
    backpressure: list[tuple[str, float]] = field(default_factory=list)  # class, Retry-After seconds
    errors: list[tuple[str, str]] = field(default_factory=list)  # class, what happened


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


def _sampler(url: str, pid: int | None, stop: threading.Event, started: float, samples: list[dict]) -> None:
    while True:
        row: dict = {"t": round(time.monotonic() - started, 2)}
        if pid is not None:
            status = proc_status(pid)
            row.update(rss_mb=status.get("VmRSS"), anon_mb=status.get("RssAnon"))
        code, text = _get(url, "/metrics")
        if code == 200:
            m = parse_metrics(text.decode(errors="replace"))
            row.update(queue=sum(m["ovembed_queue_texts"].values()),
                       high_water=max(m["ovembed_queue_texts_high_water"].values(), default=None),
                       limit=min(m["ovembed_queue_limit_texts"].values(), default=None),
                       overloaded=sum(m["ovembed_overloaded_total"].values()))
        samples.append(row)
        if stop.wait(1.0):
            return


def leak_check(samples: list[dict], warmup: float) -> dict:
    """Least-squares slope of RSS after the warm-up, and growth: the median of the last fifth of the
    window against the median of the first fifth (medians, so one long batch's transient does not count)."""
    points = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= warmup and s.get("rss_mb") is not None]
    if len(points) < 10:
        return {"samples": len(points), "slope_mb_per_min": None, "growth_pct": None}
    t, rss = np.array(points).T
    slope = float(np.polyfit(t / 60, rss, 1)[0])
    fifth = max(2, len(rss) // 5)
    first, last = float(np.median(rss[:fifth])), float(np.median(rss[-fifth:]))
    return {"samples": len(points), "window_s": round(float(t[-1] - t[0]), 1), "slope_mb_per_min": round(slope, 2),
            "growth_pct": round(100 * (last - first) / first, 2), "first_mb": round(first, 1),
            "last_mb": round(last, 1), "min_mb": round(float(rss.min()), 1), "max_mb": round(float(rss.max()), 1)}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return percentiles(values) if values else {"p50": None, "p95": None, "p99": None}


def _calibrate(url: str, model: str | None) -> tuple[Sizer, int | None]:
    """The filler words' token costs from the service's /tokenize; and the model's max length."""
    from ovembed.workload import WORDS

    numbers = [str(10**9 + 12345), str(987654321), "0"]
    code, data = _post_json(url, "/tokenize", {"texts": [*WORDS, *numbers], **({"model": model} if model else {})})
    counts = data.get("counts") if code == 200 and isinstance(data, dict) else None
    if not counts or len(counts) != len(WORDS) + len(numbers):
        raise UsageError(f"{url}/tokenize answered {code or 'nothing'}: the soak needs it to size its texts")
    costs = [max(1, c - 2) for c in counts]  # each alone is [CLS] word [SEP]
    return Sizer(tuple(costs[:len(WORDS)]), max(costs[len(WORDS):])), data.get("max_length")


def run_soak(opts: SoakOptions, progress=None) -> dict:
    """Run the soak; the report has every figure and a `checks` dict of pass/fail."""
    say = progress or (lambda message: None)
    server = None
    if opts.model is not None:
        if not (Path(opts.model) / "ovembed.json").is_file():
            raise UsageError(f"{opts.model} is not a model folder (no ovembed.json); make one with `ovembed quantize`")
        env = {"OVEMBED_MAX_QUEUE_TEXTS": opts.queue_texts, "OVEMBED_BATCH_TOKENS": opts.batch_tokens,
               "OVEMBED_WORKERS_INFER": opts.infer_requests, "OVEMBED_LOG_LEVEL": "warning", **opts.server_env}
        log = opts.log or Path(tempfile.mkstemp(prefix="ovembed-soak-", suffix=".log")[1])
        say(f"starting ovembed serve for {opts.model} (log: {log})")
        server = LocalServer(Path(opts.model), {k: str(v) for k, v in env.items() if v is not None}, log,
                             opts.load_timeout)
        url, pid = server.url, server.proc.pid
    else:
        url, pid = opts.url.rstrip("/"), opts.pid
        if _get(url, "/health")[0] != 200:
            raise UsageError(f"{url}/health is not 200: is `ovembed serve` running and ready there?")
    try:
        return _soak(url, pid, server, opts, say)
    finally:
        if server is not None:
            server.stop()


def _soak(url: str, pid: int | None, server: LocalServer | None, opts: SoakOptions, say) -> dict:
    sizer, model_max = _calibrate(url, opts.served_model)
    max_tokens = opts.max_tokens
    if model_max and max_tokens > model_max:
        say(f"--max-tokens {max_tokens} is above the model's max length {model_max}: using {model_max}")
        max_tokens = model_max
    classes = length_classes(max_tokens)
    warmup = opts.warmup if opts.warmup is not None else min(60.0, 0.2 * opts.seconds)
    rss_idle = proc_status(pid) if pid else {}

    # Warm-up requests first: the longest shapes allocate the engine's largest buffers once, before the
    # leak window, so that growth is not counted as a leak.
    say("warm-up: one text per class at its longest")
    for i, cls in enumerate(classes):
        code, _ = _post_json(url, ROUTES[1], {"texts": [sizer.text(10**9 + i, cls.high)],
                                              **({"model": opts.served_model} if opts.served_model else {})},
                             timeout=opts.timeout)
        if code != 200:
            raise UsageError(f"warm-up request ({cls.name}, {cls.high} tokens) answered {code or 'nothing'}")

    tally, samples, stop = Tally(), [], threading.Event()
    start_line = threading.Barrier(opts.clients + 1)
    threads = [threading.Thread(target=_client, args=(k, url, opts, classes, sizer, tally, start_line),
                                daemon=True) for k in range(opts.clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.monotonic()
    sampler = threading.Thread(target=_sampler, args=(url, pid, stop, started, samples), daemon=True)
    sampler.start()
    say(f"{opts.clients} clients for {opts.seconds:g} s (warm-up window {warmup:g} s), texts up to {max_tokens} tokens")
    for thread in threads:
        thread.join(opts.seconds + opts.timeout + 30)
    drained = time.monotonic() - started
    stuck = sum(t.is_alive() for t in threads)
    stop.set()
    sampler.join()
    code, text = _get(url, "/metrics")  # the counters as they stand after the last answer
    final = parse_metrics(text.decode(errors="replace")) if code == 200 else {}
    status = proc_status(pid) if pid else {}
    alive = server.alive() if server is not None else psutil.pid_exists(pid) if pid else None
    health = _get(url, "/health")[0]
    report = _report(opts, url, classes, tally, samples, warmup, rss_idle, status, alive, health, stuck, drained,
                     max_tokens)
    if final:
        report["queue"]["overloaded_total"] = sum(final["ovembed_overloaded_total"].values())
        report["queue"]["high_water"] = max(final["ovembed_queue_texts_high_water"].values(), default=None)
        report["server_requests"] = final["ovembed_requests_total"]
    return report


def _report(opts, url, classes, tally, samples, warmup, rss_idle, status, alive, health, stuck, drained,
            max_tokens) -> dict:
    rows = {}
    for name in [c.name for c in classes] + ["all"]:
        served = [s for s in tally.served if name in ("all", s[0])]
        rows[name] = {
            "served": len(served),
            "backpressure_503": sum(1 for b in tally.backpressure if name in ("all", b[0])),
            "errors": sum(1 for e in tally.errors if name in ("all", e[0])),
            "mean_tokens": round(float(np.mean([s[4] for s in served])), 1) if served else None,
            "max_tokens": max((s[4] for s in served), default=None),
            **{f"{k}_ms": v for k, v in _percentiles([s[2] for s in served]).items()},
            "e2e_p99_ms": _percentiles([s[3] for s in served])["p99"],
        }
    routes = {r: sum(1 for s in tally.served if s[1] == r) for r in opts.routes}
    metric_rows = [s for s in samples if "queue" in s]
    high_water = max((s["high_water"] for s in metric_rows if s.get("high_water") is not None), default=None)
    limit = next((s["limit"] for s in metric_rows if s.get("limit") is not None), None)
    queue_max_sampled = max((s["queue"] for s in metric_rows), default=None)
    leak = leak_check(samples, warmup)
    after_warmup = next((s.get("rss_mb") for s in samples if s["t"] >= warmup and s.get("rss_mb")), None)
    memory = {"rss_idle_mb": rss_idle.get("VmRSS"), "rss_after_warmup_mb": after_warmup,
              "rss_end_mb": status.get("VmRSS"), "anon_end_mb": status.get("RssAnon"),
              "peak_rss_mb": status.get("VmHWM"), **{f"leak_{k}": v for k, v in leak.items()}}
    memory = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in memory.items()}
    checks: dict[str, dict] = {}
    checks["no errors beyond 503 backpressure"] = {"passed": not tally.errors and not stuck,
                                                   "value": f"{len(tally.errors)} errors, {stuck} clients stuck"}
    checks["requests served"] = {"passed": bool(tally.served), "value": len(tally.served)}
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
    checks["server alive and healthy"] = {"passed": alive is not False and health == 200,
                                          "value": f"process {'running' if alive else 'gone' if alive is False else '?'}"
                                          f", /health {health}"}

    return {
        "url": url, "model": str(opts.model) if opts.model else None, "clients": opts.clients,
        "seconds": opts.seconds, "warmup_s": warmup, "drained_s": round(drained, 1), "max_tokens": max_tokens,
        "seed": opts.seed, "classes": [c.__dict__ for c in classes], "routes": routes,
        "server_settings": {"max_queue_texts": opts.queue_texts, "batch_tokens": opts.batch_tokens,
                            "workers_infer": opts.infer_requests, **opts.server_env},
        "requests": rows, "memory": memory,
        "queue": {"limit": limit, "high_water": high_water, "max_sampled_depth": queue_max_sampled,
                  "overloaded_total": metric_rows[-1].get("overloaded") if metric_rows else None},
        "first_errors": [e[1] for e in tally.errors[:5]], "checks": checks,
        "passed": all(c["passed"] is not False for c in checks.values()),
        "samples": samples, "machine": machine(),
    }


def soak_table(report: dict) -> str:
    head = ("| class | served | 503 backpressure | errors | mean tokens | max tokens | p50 ms | p95 ms | p99 ms | "
            "e2e p99 ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in report["requests"].items():
        lines.append(f"| {name} | {r['served']} | {r['backpressure_503']} | {r['errors']} | {r['mean_tokens']} | "
                     f"{r['max_tokens']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['e2e_p99_ms']} |")
    m, q = report["memory"], report["queue"]
    lines += ["", f"server RSS MB: idle {m['rss_idle_mb']}, after warm-up {m['rss_after_warmup_mb']}, end "
              f"{m['rss_end_mb']} (anon {m['anon_end_mb']}), peak {m['peak_rss_mb']}; after warm-up: min "
              f"{m.get('leak_min_mb')}, max {m.get('leak_max_mb')}, slope {m.get('leak_slope_mb_per_min')} MB/min, "
              f"growth {m.get('leak_growth_pct')}% over {m.get('leak_window_s')} s",
              f"queue: bound {q['limit']}, high-water {q['high_water']}, deepest sampled {q['max_sampled_depth']}, "
              f"503s counted by the server {q['overloaded_total']}", ""]
    for name, c in report["checks"].items():
        verdict = "PASS" if c["passed"] else "FAIL" if c["passed"] is False else "n/a "
        lines.append(f"{verdict}  {name}: {c['value']}")
    return "\n".join(lines)


# --- memory -----------------------------------------------------------------------------------------

BATCH_LENGTH = 512  # the budget's attention limit is tokens x 512: at this length both limits bind at once
DISPATCH_BUDGETS = 4  # the batcher merges up to 4 token budgets into one engine call


def _vm(key: str) -> float:
    return proc_status().get(key, float("nan"))


def _memory_child(args: argparse.Namespace) -> None:
    """One setting in this process: load, warm up, reset the high-water mark, run the worst call."""
    from ovembed.engine import EmbeddingModel, TokenBudget
    from ovembed.engine.batcher import plan_batches

    t0 = time.perf_counter()
    model = EmbeddingModel(args.model, budget=TokenBudget(tokens=args.batch_tokens, attention=args.batch_tokens * 512),
                           infer_requests=args.infer_requests)
    figures = {"load_s": round(time.perf_counter() - t0, 2), "idle_mb": round(_vm("VmRSS"), 1)}
    m = model.manifest
    rng = np.random.default_rng(0)
    high = min(m.vocab_size, 1000)

    def ids(n: int, length: int) -> list[list[int]]:
        body = rng.integers(5, high, (n, max(length - 2, 0))).tolist()
        return [[m.special_token_ids[0], *row, m.special_token_ids[2]] for row in body]

    wanted = model.outputs  # the worst case: every head, ColBERT's per-token vectors included
    model.embed_tokens(ids(1, 16), wanted)
    model.embed_tokens(ids(8, 128), wanted)
    figures["warm_mb"] = round(_vm("VmRSS"), 1)
    figures["warm_anon_mb"] = round(_vm("RssAnon"), 1)
    texts = ids(args.texts, args.length)
    batches = plan_batches([len(x) for x in texts], model.budget)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)
        figures["hwm_reset"] = True
    except OSError:
        figures["hwm_reset"] = False
    t0 = time.perf_counter()
    model.embed_tokens(texts, wanted)
    figures.update(seconds=round(time.perf_counter() - t0, 2), peak_mb=round(_vm("VmHWM"), 1),
                   after_mb=round(_vm("VmRSS"), 1), batches=len(batches), infer_requests=model.runtime.infer_requests,
                   batch_texts=max(len(b) for b in batches), hidden=m.hidden_size, colbert_dim=m.colbert_dimension,
                   max_length=m.max_length)
    print(json.dumps(figures))


@dataclass
class MemoryRow:
    batch_tokens: int
    infer_requests: int
    scenario: str  # "batch": a full merged call of 512-token texts; "long": max-length texts, one per batch
    texts: int
    length: int
    figures: dict = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return min(self.infer_requests, self.figures.get("batches", 1))

    @property
    def batch_tokens_used(self) -> int:
        return self.figures.get("batch_texts", 1) * self.length  # padded tokens of one batch

    @property
    def extra_mb(self) -> float:
        return self.figures["peak_mb"] - self.figures["warm_mb"]


def memory_rows(max_length: int, budgets: list[int], infer_requests: list[int], scenarios: list[str]) -> list[MemoryRow]:
    rows = []
    length = min(BATCH_LENGTH, max_length)
    for n in infer_requests:
        if "batch" in scenarios:
            for budget in budgets:
                rows.append(MemoryRow(budget, n, "batch", max(1, DISPATCH_BUDGETS * budget // length), length))
        if "long" in scenarios:
            # A max-length text exceeds the attention limit, so it runs alone whatever the budget:
            # `n` of them keep every infer request busy with the largest single batch there is.
            rows.append(MemoryRow(max(budgets), n, "long", n, max_length))
    return rows


def fit_formula(rows: list[MemoryRow]) -> dict | None:
    """peak - warm = a x P + b x A, least squares with a, b >= 0, where P = padded tokens of the largest
    batch (batch x length) and A = its attention elements (batch x length^2).

    Infer requests in flight are not a factor: with the LATENCY hint OpenVINO runs one stream, whose
    intermediate buffers every request shares (the table shows it: 1 or 2 requests, the same peak)."""
    ok = [r for r in rows if "peak_mb" in r.figures]
    if len(ok) < 2:
        return None
    x = np.array([[r.batch_tokens_used, r.batch_tokens_used * r.length] for r in ok], dtype=float)
    y = np.array([max(r.extra_mb, 0.0) for r in ok])
    best = None
    for cols in ([0, 1], [0], [1]):  # non-negative least squares over three candidate supports
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(2)
        full[cols] = coef
        err = float(np.abs(x @ full - y).max())
        if best is None or err < best[1]:
            best = (full, err)
    if best is None:
        return None
    (a, b), err = best
    return {"mb_per_token": float(a), "mb_per_attention": float(b), "max_abs_error_mb": round(err, 1),
            "warm_mb": max(r.figures["warm_mb"] for r in ok)}


def predicted_peak(fit: dict, batch_tokens: int, max_length: int) -> float:
    """The sizing formula: warm + the larger of a full-budget batch of 512-token texts and one max-length text.

    The token budget admits at most T padded tokens and T x 512 attention elements per batch, except
    that a text past those limits runs alone, so the worst batch has P = max(T, L) and
    A = max(T x min(L, 512), L^2), L being the model's max length."""
    tokens = max(batch_tokens, max_length)
    attention = max(batch_tokens * min(max_length, 512), max_length * max_length)
    return fit["warm_mb"] + fit["mb_per_token"] * tokens + fit["mb_per_attention"] * attention


def run_memory(model: Path, budgets: list[int], infer_requests: list[int], scenarios: list[str],
               max_length: int | None = None, progress=None) -> dict:
    from ovembed.manifest import Manifest

    say = progress or (lambda message: None)
    manifest = Manifest.read(model)
    length = min(max_length or manifest.max_length, manifest.max_length)
    rows = memory_rows(length, budgets, infer_requests, scenarios)
    for row in rows:
        say(f"memory: budget {row.batch_tokens}, {row.infer_requests} infer requests, {row.scenario}: "
            f"{row.texts} x {row.length} tokens ...")
        cmd = [sys.executable, "-m", "ovembed.evaluate.soak", "_memory_child", "--model", str(model),
               "--batch-tokens", str(row.batch_tokens), "--infer-requests", str(row.infer_requests),
               "--texts", str(row.texts), "--length", str(row.length)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()
            row.figures = {"error": tail[-1] if tail else f"exit {proc.returncode}"}
        else:
            row.figures = json.loads(proc.stdout.strip().splitlines()[-1])
    fit = fit_formula(rows)
    report = {"model": str(model), "max_length": length, "rows": [
        {"batch_tokens": r.batch_tokens, "infer_requests": r.infer_requests, "scenario": r.scenario, "texts": r.texts,
         "length": r.length, "in_flight": r.in_flight if "batches" in r.figures else None, **r.figures} for r in rows],
        "fit": fit}
    if fit:
        report["bounds"] = [{"batch_tokens": b, "predicted_peak_mb": round(predicted_peak(fit, b, length))}
                            for b in budgets]

    report["machine"] = machine()
    return report


def memory_table(report: dict) -> str:
    head = ("| budget tokens | infer requests | scenario | texts x tokens | batches | texts/batch | load s | idle MB | "
            "warm MB | peak MB | peak - warm MB | after MB | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        what = f"| {r['batch_tokens']} | {r['infer_requests']} | {r['scenario']} | {r['texts']} x {r['length']} |"
        if "error" in r:
            lines.append(f"{what} error: {r['error']} |")
            continue
        lines.append(f"{what} {r['batches']} | {r['batch_texts']} | {r['load_s']} | {r['idle_mb']} | {r['warm_mb']} | "
                     f"{r['peak_mb']} | {r['peak_mb'] - r['warm_mb']:.1f} | {r['after_mb']} | {r['seconds']} |")
    fit = report.get("fit")
    if fit:
        lines += ["", f"fit: peak MB ~ {fit['warm_mb']:.0f} (warm) + {fit['mb_per_token'] * 1024:.4g} MB per 1k tokens x P "
                  f"+ {fit['mb_per_attention'] * 2**20:.4g} MB per 1M attention elements x A "
                  f"(largest error {fit['max_abs_error_mb']} MB)",
                  f"  P = max(OVEMBED_BATCH_TOKENS, L), A = max(OVEMBED_BATCH_TOKENS x min(L, 512), L^2), L = max length "
                  f"{report['max_length']}"]
        for b in report.get("bounds", []):
            lines.append(f"  OVEMBED_BATCH_TOKENS={b['batch_tokens']}: predicted peak {b['predicted_peak_mb']} MB")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _soak_main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(prog=prog, description="Soak a service on loopback with mixed-length concurrent "
                                "clients; check errors, p99, RSS growth and the queue bound.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service on loopback, e.g. http://127.0.0.1:8019")
    where.add_argument("--model", type=Path, help="a model folder: start `ovembed serve` for it and watch its RSS")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, to sample its RSS")
    p.add_argument("--clients", type=_positive(int), default=64)
    p.add_argument("--minutes", type=_positive(float), default=5.0)
    p.add_argument("--warmup", type=float, help="seconds excluded from the leak check (default: 20%% of the run, max 60)")
    p.add_argument("--max-tokens", type=_positive(int), default=8192, help="longest document, in tokens (8192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--route", choices=["both", *ROUTES], default="both", help="both: alternate (default)")
    p.add_argument("--served-model", help="the `model` field to send (default: the service's default model)")
    p.add_argument("--queue-texts", type=_positive(int), help="--model: OVEMBED_MAX_QUEUE_TEXTS for the server")
    p.add_argument("--batch-tokens", type=_positive(int), help="--model: OVEMBED_BATCH_TOKENS for the server")
    p.add_argument("--infer-requests", type=_positive(int), help="--model: OVEMBED_WORKERS_INFER for the server")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="--model: one more environment variable for the server (repeatable)")
    p.add_argument("--timeout", type=_positive(float), default=600.0, help="seconds per request (600)")
    p.add_argument("--max-slope", type=float, default=1.0, help="leak check: MB/min after warm-up (1)")
    p.add_argument("--max-growth", type=float, default=5.0, help="leak check: %% growth after warm-up (5)")
    p.add_argument("--log", type=Path, help="--model: the server's log file (default: a temporary file)")
    p.add_argument("--json", type=Path, help="write the whole report (with RSS samples) to this file")
    args = p.parse_args(argv)
    if args.url:
        host = urlsplit(args.url).hostname
        if not args.url.startswith("http://") or host not in LOOPBACK:
            raise UsageError(f"--url must be http:// on loopback ({', '.join(LOOPBACK)}), not {args.url!r}")
    elif args.pid is not None:
        raise UsageError("--pid goes with --url (with --model the command knows its server's pid)")
    if args.pid is not None and not psutil.pid_exists(args.pid):
        raise UsageError(f"no process {args.pid}")
    if args.warmup is not None and not 0 <= args.warmup < args.minutes * 60:
        raise UsageError("--warmup must be at least 0 and shorter than the run")
    if args.max_tokens < 16:
        raise UsageError("--max-tokens must be at least 16")
    if args.server_env and not args.model:
        raise UsageError("--server-env goes with --model")
    bad = [item for item in args.server_env if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise UsageError(f"--server-env takes NAME=VALUE, not {bad[0]!r}")
    opts = SoakOptions(url=args.url, model=args.model, pid=args.pid, clients=args.clients, seconds=args.minutes * 60,
                       warmup=args.warmup, max_tokens=args.max_tokens, seed=args.seed,
                       routes=ROUTES if args.route == "both" else (args.route,), served_model=args.served_model,
                       queue_texts=args.queue_texts, batch_tokens=args.batch_tokens, infer_requests=args.infer_requests,
                       server_env=dict(item.split("=", 1) for item in args.server_env),
                       timeout=args.timeout, max_slope_mb_min=args.max_slope, max_growth_pct=args.max_growth,
                       log=args.log)
    report = run_soak(opts, progress=lambda m: print(f"[soak] {m}", file=sys.stderr, flush=True))
    report["command"] = f"{prog} " + " ".join(argv)
    print(soak_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["passed"] else EXIT_FAILED


def _memory_main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(prog=f"{prog} memory", description="Idle, warm and peak RSS of the worst merged "
                                "call per setting, one child process each; prints the sizing formula.")
    p.add_argument("--model", type=Path, required=True, help="a model folder made by `ovembed quantize`")
    p.add_argument("--batch-tokens", type=positive_ints, default=[4096, 16384], help="token budgets (4096,16384)")
    p.add_argument("--infer-requests", type=positive_ints, default=[1, 2], help="infer requests in flight (1,2)")
    p.add_argument("--scenarios", default="batch,long", help="batch: full 512-token batches; long: max-length texts")
    p.add_argument("--max-length", type=_positive(int), help="longest text (default: the model's max length)")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not scenarios or set(scenarios) - {"batch", "long"}:
        raise UsageError(f"--scenarios takes batch and/or long, not {args.scenarios!r}")
    if not (args.model / "ovembed.json").is_file():
        raise UsageError(f"{args.model} is not a model folder (no ovembed.json); make one with `ovembed quantize`")
    report = run_memory(args.model, args.batch_tokens, args.infer_requests, scenarios, args.max_length,
                        progress=lambda m: print(f"[soak] {m}", file=sys.stderr, flush=True))
    report["command"] = f"{prog} memory " + " ".join(argv)
    print(memory_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_FAILED if any("error" in r for r in report["rows"]) else EXIT_OK


def main(argv: list[str] | None = None, prog: str = "python -m ovembed.evaluate.soak") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["memory"]:
            return _memory_main(argv[1:], prog)
        if argv[:1] == ["_memory_child"]:
            c = argparse.ArgumentParser()
            for flag in ("--batch-tokens", "--infer-requests", "--texts", "--length"):
                c.add_argument(flag, type=int, required=True)
            c.add_argument("--model", type=Path, required=True)
            _memory_child(c.parse_args(argv[1:]))
            return EXIT_OK
        return _soak_main(argv, prog)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
