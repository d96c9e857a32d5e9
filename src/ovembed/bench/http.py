"""`ovembed bench http`: a running service under N concurrent clients, one text per request; with an engine
model, the same texts timed in-process (before the load, never during it) for comparison."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ovembed.bench.common import machine, markdown, percentiles_ms, run_clients, time_runs
from ovembed.client import Client
from ovembed.errors import ErrorKind, OvembedError
from ovembed.workload import varied_texts

HTTP_TEXTS = 256  # distinct texts per token count, so no request repeats a recent one
HTTP_TIMEOUT_S = 60.0
ENGINE_BATCH = 32


@dataclass
class HttpOptions:
    url: str
    model: str | None = None  # the model to ask for; None: the service's default
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    tokens: list[int] = field(default_factory=lambda: [16, 128])
    seconds: float = 5.0
    engine_model: Path | None = None
    api_key: str | None = None
    command: str = ""


def _check_ready(client: Client) -> None:
    """The service answers and is ready: otherwise one line and exit 1, before any texts are sized."""
    health = client.health()
    if health.get("status") != "ok":
        raise OvembedError(ErrorKind.UNAVAILABLE, f"{client.url}/health says {health.get('status')!r}: "
                           f"{health.get('detail')}")


def _token_counts(client: Client, model: str | None, texts: list[str]) -> list[int] | None:
    """Token counts from the service's /tokenize, or None when it cannot tell (then words are the estimate)."""
    try:
        counts = client.tokenize(texts, model=model)["counts"]
    except (OvembedError, KeyError):
        return None
    return counts if isinstance(counts, list) and len(counts) == len(texts) else None


def _texts_of_tokens(client: Client, model: str | None, tokens: int) -> tuple[list[str], float | None]:
    """HTTP_TEXTS varied texts of about `tokens` tokens: sized by word count, corrected once with the
    tokenizer's measured tokens per word. Returns the texts and their mean token count (None if unknown)."""
    words = max(1, tokens - 3)  # each text also has a leading number, [CLS] and [SEP]
    counts = _token_counts(client, model, varied_texts(16, words))
    if counts:
        per_word = max((float(np.mean(counts)) - 2) / (words + 1), 0.1)
        words = max(1, round((tokens - 2) / per_word) - 1)
    texts = varied_texts(HTTP_TEXTS, words)
    counts = _token_counts(client, model, texts)
    return texts, (round(float(np.mean(counts)), 1) if counts else None)


def _engine_shape(model, texts: list[str], seconds: float) -> dict:
    """One-text latency and batch-32 throughput of the engine on `texts`."""
    model.embed(texts[:ENGINE_BATCH])  # warm-up: the first inference of a shape compiles kernels
    single = time_runs(lambda i: model.embed([texts[i % len(texts)]]), seconds, 10, 1000)
    batches = [texts[s:s + ENGINE_BATCH] for s in range(0, len(texts) - ENGINE_BATCH + 1, ENGINE_BATCH)]
    batch = time_runs(lambda i: model.embed(batches[i % len(batches)]), seconds, 3, 100)
    return {"p50_ms": round(float(np.percentile(single, 50)), 2), "runs": len(single),
            f"batch{ENGINE_BATCH}_texts_per_s": round(ENGINE_BATCH / (float(np.median(batch)) / 1000), 1)}


def _engine_figures(folder: Path, texts_by_tokens: dict[int, list[str]], seconds: float) -> dict[int, dict]:
    """The engine in this process on the same texts as the HTTP rows, per token count."""
    from ovembed.engine import load_model

    model = load_model(folder)
    return {tokens: _engine_shape(model, texts, seconds) for tokens, texts in texts_by_tokens.items()}


def _drive(url: str, headers: dict, model: str | None, texts: list[str], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, each sending one text per request back to back until `seconds` pass.

    Clients are threads with keep-alive `http.client` connections: on a 2-core machine the load
    generator shares the CPU with the server, and this is the cheapest client Python has (httpx
    costs about 1 ms more per request), so the figures are the server's, not the client's."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    extra = {"model": model} if model else {}
    bodies = [json.dumps({"texts": [t], **extra}).encode() for t in texts]
    request_headers = {"Content-Type": "application/json", **headers}
    max_requests = int(seconds * 2000) + 1  # bounds each client even if the clock misbehaves
    times: list[float] = []
    errors: list[str] = []
    start_line = threading.Barrier(concurrency + 1)

    def client(k: int) -> None:
        conn = connection_class(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_S)

        def one(i: int, record: bool) -> None:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/embeddings", bodies[i % len(bodies)], request_headers)
                response = conn.getresponse()
                payload = response.read()
                error = None if response.status == 200 else f"HTTP {response.status}: {payload[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                conn.close()
            if record:
                (errors.append(error) if error else times.append((time.perf_counter() - t0) * 1000))

        one(k, record=False)  # warm-up: open the connection
        start_line.wait()
        deadline = time.perf_counter() + seconds
        for n in range(max_requests):
            if time.perf_counter() >= deadline:
                break
            one(k + n * concurrency, record=True)
        conn.close()

    wall = run_clients(client, concurrency, start_line)
    row = {"requests": len(times) + len(errors), "errors": len(errors), **percentiles_ms(times),
           "requests_per_s": round((len(times) + len(errors)) / wall, 1), "texts_per_s": round(len(times) / wall, 1)}
    if errors:
        row["first_error"] = errors[0]
    return row


def _http_vs_engine(rows: list[dict], engine: dict[int, dict]) -> list[str]:
    """Latency at concurrency 1 on the shortest texts, throughput at the highest concurrency on the longest."""
    out = []
    short = min(engine)
    single = next((r for r in rows if r["concurrency"] == 1 and r["tokens"] == short and r["p50_ms"]), None)
    if single:
        e = engine[short]["p50_ms"]
        out.append(f"HTTP p50 1x{short} = {single['p50_ms']} ms vs engine {e} ms ({single['p50_ms'] - e:+.2f} ms)")
    long, busiest = max(engine), max(r["concurrency"] for r in rows)
    loaded = next((r for r in rows if r["concurrency"] == busiest and r["tokens"] == long), None)
    if loaded:
        e = engine[long][f"batch{ENGINE_BATCH}_texts_per_s"]
        out.append(f"HTTP throughput at concurrency {busiest} x {long} tokens = {loaded['texts_per_s']} texts/s = "
                   f"{100 * loaded['texts_per_s'] / e:.0f}% of engine batch-{ENGINE_BATCH} {e} texts/s")
    return out


def run_http(opts: HttpOptions) -> dict:
    """Size the texts with the service's tokenizer, time the engine if asked, then drive every (concurrency,
    tokens) row; the report."""
    url = opts.url.rstrip("/")
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    with Client(url, api_key=opts.api_key, timeout=HTTP_TIMEOUT_S, retries=0) as client:
        _check_ready(client)
        sized = {t: _texts_of_tokens(client, opts.model, t) for t in opts.tokens}
    texts_by_tokens = {t: texts for t, (texts, _) in sized.items()}
    engine = None
    if opts.engine_model:
        # Before the HTTP load, never during it: on two cores the two would measure each other.
        print(f"[bench] engine in-process: {opts.engine_model}", file=sys.stderr, flush=True)
        engine = _engine_figures(Path(opts.engine_model), texts_by_tokens, opts.seconds)
    rows = []
    for tokens in opts.tokens:
        for concurrency in opts.concurrency:
            print(f"[bench] http {concurrency} clients x {tokens} tokens ...", file=sys.stderr, flush=True)
            row = _drive(url, headers, opts.model, texts_by_tokens[tokens], concurrency, opts.seconds)
            rows.append({"concurrency": concurrency, "tokens": tokens, **row})
    return {"machine": machine(), "url": url, "model": opts.model, "seconds": opts.seconds,
            "mean_tokens": {t: m for t, (_, m) in sized.items()}, "http": rows, "engine": engine,
            "comparison": _http_vs_engine(rows, engine) if engine else [], "command": opts.command}


def http_text(report: dict) -> str:
    """What a person reads: the rows as a table, first errors, the engine's figures and the comparison."""
    rows, engine = report["http"], report["engine"]
    lines = [f"service: {report['url']}  model: {report['model'] or 'the default'}  {report['seconds']:g} s per row, "
             "one text per request",
             "texts: " + ", ".join(f"~{t} tokens (mean {m if m is not None else 'unknown'})"
                                   for t, m in report["mean_tokens"].items()),
             markdown(["concurrency", "tokens", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "requests/s",
                       "texts/s"],
                      [[r["concurrency"], r["tokens"], r["requests"], r["errors"], r["p50_ms"], r["p95_ms"],
                        r["p99_ms"], r["requests_per_s"], r["texts_per_s"]] for r in rows])]
    lines += [f"errors at {r['concurrency']} x {r['tokens']}: first was {r['first_error']}"
              for r in rows if "first_error" in r]
    lines += [f"engine {tokens} tokens: 1 text p50 {e['p50_ms']} ms, batch-{ENGINE_BATCH} "
              f"{e[f'batch{ENGINE_BATCH}_texts_per_s']} texts/s" for tokens, e in (engine or {}).items()]
    return "\n".join(lines + report["comparison"])
