"""Engine benchmark: PyTorch fp32 vs OpenVINO fp32 / int8-weights / int8 of the same weights.

    python -m ovembed.evaluate.bench engine SOURCE_FOLDER [--precisions fp32,int8-weights,int8]
    python -m ovembed.evaluate.bench engine --bge-m3-architecture      # random weights, real shapes
    python -m ovembed.evaluate.bench http --url URL [--engine-model FOLDER]   # a running service

Each backend runs in its own child process, one after the other, so RSS after load and peak RSS
belong to that backend alone and the two cores are not shared. `http` drives a running service with
concurrent clients and, with --engine-model, compares it with the engine in-process (timed before the
load, not during it). Each prints a table and ratios; --json writes the raw figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

LATENCY_SHAPES = (16, 128, 512)  # 1 x N tokens
THROUGHPUT_SHAPE = (32, 128)  # batch x tokens


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _anon_mb() -> float:
    """Anonymous RSS: memory the process itself holds. The rest of RSS is mostly the memory-mapped
    model files, clean pages the kernel can drop and re-read under pressure."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return _rss_mb()


def _peak_mb() -> float:
    """This process's high-water RSS (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _token_ids(n_texts: int, n_tokens: int, low: int, high: int, cls: int, sep: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[cls, *rng.integers(low, high, n_tokens - 2).tolist(), sep] for _ in range(n_texts)]


def _worker(args: argparse.Namespace) -> None:
    """One backend in this process: load, warm up, time; print one JSON object."""
    started = time.perf_counter()
    if args.backend == "pytorch":
        import torch

        from ovembed.convert import export

        source = export.inspect_source(Path(args.path), args.path, None, None)
        encoder = export.load_encoder(source)
        vocab_high = min(source.config["vocab_size"], 1000)

        def run(ids: list[list[int]]) -> None:
            with torch.inference_mode():
                t = torch.tensor(ids, dtype=torch.int64)
                encoder.embed_ids(t, torch.ones_like(t))
    else:
        from ovembed.engine import load_model

        model = load_model(args.path, performance_hint=args.hint)
        wanted = model.outputs  # the graph computes every head anyway; ask for all, as PyTorch does
        vocab_high = min(model.manifest.vocab_size, 1000)

        def run(ids: list[list[int]]) -> None:
            model.embed_tokens(ids, wanted)

    figures: dict[str, object] = {"load_s": round(time.perf_counter() - started, 2), "rss_after_load_mb": round(_rss_mb())}
    shape_ids = lambda n, t, seed=0: _token_ids(n, t, 5, vocab_high, 0, 2, seed)  # noqa: E731
    run(shape_ids(1, 16))
    run(shape_ids(*THROUGHPUT_SHAPE))
    figures["rss_after_warmup_mb"] = round(_rss_mb())
    figures["anon_after_warmup_mb"] = round(_anon_mb())

    for tokens in LATENCY_SHAPES:
        times = []
        deadline = time.perf_counter() + args.seconds
        while len(times) < args.min_runs or (time.perf_counter() < deadline and len(times) < 200):
            ids = shape_ids(1, tokens, seed=len(times))
            t0 = time.perf_counter()
            run(ids)
            times.append((time.perf_counter() - t0) * 1000)
        figures[f"1x{tokens}"] = {
            "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2),
            "runs": len(times),
        }

    batch, tokens = THROUGHPUT_SHAPE
    times = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        ids = shape_ids(batch, tokens, seed=len(times))
        t0 = time.perf_counter()
        run(ids)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    figures[f"{batch}x{tokens}"] = {
        "texts_per_s": round(batch / median, 2),
        "tokens_per_s": round(batch * tokens / median),
        "runs": len(times),
    }
    figures["peak_rss_mb"] = round(_peak_mb())
    if args.long:
        t0 = time.perf_counter()
        run(shape_ids(1, args.long))
        figures[f"1x{args.long}"] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_mb())}
    print(json.dumps(figures))


def _ensure_models(source: Path, precisions: list[str], cache: Path) -> dict[str, Path]:
    from ovembed.convert.pipeline import run_quantize

    folders = {}
    for precision in precisions:
        folder = cache / f"{source.name}-{precision}"
        if not (folder / "ovembed.json").is_file():
            print(f"[bench] quantizing {source} -> {folder}", file=sys.stderr)
            # Random weights have no meaningful accuracy to gate; speed is what is measured here.
            run_quantize(str(source), output=folder, precision=precision, gate=False)
        folders[precision] = folder
    return folders


def _run_child(backend: str, path: Path, args: argparse.Namespace, long: int) -> dict:
    cmd = [sys.executable, "-m", "ovembed.evaluate.bench", "_worker", "--backend", backend, "--path", str(path),
           "--seconds", str(args.seconds), "--min-runs", str(args.min_runs), "--hint", args.hint, "--long", str(long)]
    print(f"[bench] {backend} {path.name} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f" {f}" in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version()}


def _table(results: dict[str, dict], long: int) -> str:
    batch, tokens = THROUGHPUT_SHAPE
    latency = " | ".join(f"1x{t} p50/p95 ms" for t in LATENCY_SHAPES)
    head = (f"| backend | load s | RSS load MB | RSS warm MB (anon) | peak MB | {latency} | "
            f"{batch}x{tokens} texts/s | tokens/s |" + (f" 1x{long} s | 1x{long} peak MB |" if long else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |")
            continue
        lat = " | ".join(f"{r[f'1x{t}']['p50_ms']} / {r[f'1x{t}']['p95_ms']}" for t in LATENCY_SHAPES)
        tp = r[f"{batch}x{tokens}"]
        memory = f"{r['rss_after_load_mb']} | {r['rss_after_warmup_mb']} ({r['anon_after_warmup_mb']}) | {r['peak_rss_mb']}"
        row = f"| {name} | {r['load_s']} | {memory} | {lat} | {tp['texts_per_s']} | {tp['tokens_per_s']} |"
        if long:
            lr = r.get(f"1x{long}")
            row += f" {lr['seconds']} | {lr['peak_rss_mb']} |" if lr else " – | – |"
        lines.append(row)
    return "\n".join(lines)


def _ratios(results: dict[str, dict]) -> list[str]:
    batch, tokens = THROUGHPUT_SHAPE
    ok = {k: v for k, v in results.items() if "error" not in v}
    out = []
    base = ok.get("pytorch-fp32")
    for name, r in ok.items():
        if base is None or name == "pytorch-fp32":
            continue
        q = base["1x16"]["p50_ms"] / r["1x16"]["p50_ms"]
        t = r[f"{batch}x{tokens}"]["texts_per_s"] / base[f"{batch}x{tokens}"]["texts_per_s"]
        out.append(f"{name}: {q:.1f}x PyTorch fp32 on a 16-token query (p50), {t:.1f}x on {batch}x{tokens} throughput")
    if "openvino-int8" in ok and "openvino-int8-weights" in ok:
        r = (ok["openvino-int8"][f"{batch}x{tokens}"]["texts_per_s"]
             / ok["openvino-int8-weights"][f"{batch}x{tokens}"]["texts_per_s"])
        out.append(f"openvino-int8: {r:.2f}x the throughput of openvino-int8-weights")
    return out


def _engine(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    if args.bge_m3_architecture:
        from ovembed.convert.synthetic import BGE_M3_ARCHITECTURE, build_m3_layout_model

        source = cache / "bge-m3-architecture-random"
        if not (source / "sparse_linear.pt").is_file():
            print(f"[bench] building a random-weight BGE-M3 architecture model in {source}", file=sys.stderr)
            build_m3_layout_model(source, **BGE_M3_ARCHITECTURE)
    elif args.source:
        source = Path(args.source)
    else:
        sys.exit("bench engine: give a source model folder or --bge-m3-architecture")
    precisions = [p for p in args.precisions.split(",") if p]
    folders = _ensure_models(source, precisions, cache)
    results: dict[str, dict] = {}
    if not args.skip_pytorch:
        results["pytorch-fp32"] = _run_child("pytorch", source, args, args.long_pytorch)
    for precision, folder in folders.items():
        results[f"openvino-{precision}"] = _run_child("openvino", folder, args, args.long)
    report = {"machine": machine(), "source": str(source), "hint": args.hint, "results": results,
              "command": "python -m ovembed.evaluate.bench " + " ".join(sys.argv[1:])}
    long = args.long or args.long_pytorch
    print(f"machine: {report['machine']}")
    print(f"model: {source}  (OpenVINO performance hint {args.hint})")
    print(_table(results, long))
    for line in _ratios(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


# --- http: a running service under concurrent clients ------------------------------------------------

HTTP_TEXTS = 256  # distinct texts per token count, so no request repeats a recent one
HTTP_TIMEOUT_S = 60.0
ENGINE_BATCH = 32


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _token_counts(client, model: str | None, texts: list[str]) -> list[int] | None:
    """Token counts from the service's /tokenize, or None when it cannot tell (then words are the estimate)."""
    from ovembed.validate import RequestFailed, call

    try:
        counts = call(client, "POST", "/tokenize", {"texts": texts, **({"model": model} if model else {})})["counts"]
    except (RequestFailed, KeyError):
        return None
    return counts if isinstance(counts, list) and len(counts) == len(texts) else None


def _texts_of_tokens(client, model: str | None, tokens: int) -> tuple[list[str], float | None]:
    """HTTP_TEXTS varied texts of about `tokens` tokens: sized by word count, corrected once with the
    tokenizer's measured tokens per word. Returns the texts and their mean token count (None if unknown)."""
    from ovembed.validate import varied_texts

    words = max(1, tokens - 3)  # each text also has a leading number, [CLS] and [SEP]
    counts = _token_counts(client, model, varied_texts(16, words))
    if counts:
        per_word = max((float(np.mean(counts)) - 2) / (words + 1), 0.1)
        words = max(1, round((tokens - 2) / per_word) - 1)
    texts = varied_texts(HTTP_TEXTS, words)
    counts = _token_counts(client, model, texts)
    return texts, (round(float(np.mean(counts)), 1) if counts else None)


def _time_runs(run, seconds: float, min_runs: int, max_runs: int) -> list[float]:
    """Milliseconds of run(i) for i = 0, 1, …: at least min_runs, then until `seconds` or max_runs."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t0 = time.perf_counter()
        run(len(times))
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _engine_shape(model, texts: list[str], seconds: float) -> dict:
    """One-text latency and batch-32 throughput of the engine on `texts`."""
    model.embed(texts[:ENGINE_BATCH])  # warm-up: the first inference of a shape compiles kernels
    single = _time_runs(lambda i: model.embed([texts[i % len(texts)]]), seconds, 10, 1000)
    batches = [texts[s:s + ENGINE_BATCH] for s in range(0, len(texts) - ENGINE_BATCH + 1, ENGINE_BATCH)]
    batch = _time_runs(lambda i: model.embed(batches[i % len(batches)]), seconds, 3, 100)
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
    import http.client
    import threading
    from urllib.parse import urlsplit

    from ovembed.validate import percentiles

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

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    row = {"requests": len(times) + len(errors), "errors": len(errors),
           **({f"{k}_ms": v for k, v in percentiles(times).items()} if times else {"p50_ms": None, "p95_ms": None,
                                                                                  "p99_ms": None}),
           "requests_per_s": round((len(times) + len(errors)) / wall, 1), "texts_per_s": round(len(times) / wall, 1)}
    if errors:
        row["first_error"] = errors[0]
    return row


def _http_table(rows: list[dict]) -> str:
    head = "| concurrency | tokens | requests | errors | p50 ms | p95 ms | p99 ms | requests/s | texts/s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['tokens']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['p99_ms']} | {r['requests_per_s']} | {r['texts_per_s']} |")
    return "\n".join(lines)


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


def _http(args: argparse.Namespace) -> None:

    import httpx

    from ovembed.validate import RequestFailed, call

    url = args.url.rstrip("/")
    api_key = args.api_key or os.environ.get("OVEMBED_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=HTTP_TIMEOUT_S) as client:
        try:
            call(client, "GET", "/health")
        except RequestFailed as exc:
            sys.exit(f"bench http: {exc}")
        sized = {t: _texts_of_tokens(client, args.model, t) for t in args.tokens}
    texts_by_tokens = {t: texts for t, (texts, _) in sized.items()}
    engine = None
    if args.engine_model:
        # Before the HTTP load, never during it: on two cores the two would measure each other.
        print(f"[bench] engine in-process: {args.engine_model}", file=sys.stderr, flush=True)
        engine = _engine_figures(Path(args.engine_model), texts_by_tokens, args.seconds)
    rows = []
    for tokens in args.tokens:
        for concurrency in args.concurrency:
            print(f"[bench] http {concurrency} clients x {tokens} tokens ...", file=sys.stderr, flush=True)
            row = _drive(url, headers, args.model, texts_by_tokens[tokens], concurrency, args.seconds)
            rows.append({"concurrency": concurrency, "tokens": tokens, **row})
    print(f"service: {url}  model: {args.model or 'the default'}  {args.seconds:g} s per row, one text per request")
    print("texts: " + ", ".join(f"~{t} tokens (mean {m if m is not None else 'unknown'})" for t, (_, m) in sized.items()))
    print(_http_table(rows))
    for r in rows:
        if "first_error" in r:
            print(f"errors at {r['concurrency']} x {r['tokens']}: first was {r['first_error']}")
    comparison = []
    if engine:
        for tokens, e in engine.items():
            print(f"engine {tokens} tokens: 1 text p50 {e['p50_ms']} ms, batch-{ENGINE_BATCH} "
                  f"{e[f'batch{ENGINE_BATCH}_texts_per_s']} texts/s")
        comparison = _http_vs_engine(rows, engine)
        for line in comparison:
            print(line)
    if args.json:
        report = {"machine": machine(), "url": url, "model": args.model, "seconds": args.seconds,
                  "mean_tokens": {t: m for t, (_, m) in sized.items()}, "http": rows, "engine": engine,
                  "comparison": comparison, "command": "python -m ovembed.evaluate.bench " + " ".join(sys.argv[1:])}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None, prog: str = "python -m ovembed.evaluate.bench") -> None:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="PyTorch fp32 vs OpenVINO precisions, same weights, same run")
    e.add_argument("source", nargs="?", help="Hugging Face model folder (the weights to compare)")
    e.add_argument("--bge-m3-architecture", action="store_true", help="build and use a random-weight BGE-M3 (568M)")
    e.add_argument("--precisions", default="fp32,int8-weights,int8")
    e.add_argument("--cache", default=".bench", help="where converted models are kept between runs")
    e.add_argument("--seconds", type=float, default=5.0, help="time per shape (at least --min-runs runs)")
    e.add_argument("--min-runs", type=int, default=10)
    e.add_argument("--hint", default="LATENCY", choices=["LATENCY", "THROUGHPUT"])
    e.add_argument("--long", type=int, default=0, help="also time one text of this many tokens (OpenVINO)")
    e.add_argument("--long-pytorch", type=int, default=0, help="the same for PyTorch (slow)")
    e.add_argument("--skip-pytorch", action="store_true")
    e.add_argument("--json", help="write the figures to this file")
    e.set_defaults(func=_engine)
    h = sub.add_parser("http", help="a running service under N concurrent clients (optionally vs the engine)")
    h.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8019")
    h.add_argument("--model", help="model name to ask for (default: the service's default)")
    h.add_argument("--concurrency", type=_positive_ints, default=[1, 8, 32], help="clients, comma-separated (1,8,32)")
    h.add_argument("--tokens", type=_positive_ints, default=[16, 128], help="tokens per text, comma-separated (16,128)")
    h.add_argument("--seconds", type=float, default=5.0, help="time per (concurrency, tokens) row")
    h.add_argument("--engine-model", help="also time this model folder in-process on the same texts, before the load")
    h.add_argument("--api-key", help="Bearer key (default: env OVEMBED_API_KEY)")
    h.add_argument("--json", help="write the figures to this file")
    h.set_defaults(func=_http)
    w = sub.add_parser("_worker")
    w.add_argument("--backend", required=True)
    w.add_argument("--path", required=True)
    w.add_argument("--seconds", type=float, default=5.0)
    w.add_argument("--min-runs", type=int, default=10)
    w.add_argument("--hint", default="LATENCY")
    w.add_argument("--long", type=int, default=0)
    w.set_defaults(func=_worker)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
