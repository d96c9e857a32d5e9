"""Speed of ours against peers on the same weights: `engine` (in-process backends) and `http` (a service).

    python -m ovembed.evaluate.bench engine SOURCE_FOLDER [--backends pytorch,onnx-fp32,onnx-int8,int8-weights,int8]
    python -m ovembed.evaluate.bench engine --bge-m3-architecture      # random weights, real shapes
    python -m ovembed.evaluate.bench http --url URL [--engine-model FOLDER]   # a running service

`engine` runs each backend (see peers.py: PyTorch fp32, ONNX Runtime fp32 and dynamic int8, OpenVINO
int8-weights, ours) in its own child process, one after the other, so RSS after load and peak RSS belong
to that backend alone and the cores are not shared. Every backend gets the same token ids: latency
percentiles per 1xN shape, throughput per batch size and per number of concurrent callers, and tokens/s
on real mixed-length paragraphs (XQuAD). `http` drives a running service with concurrent clients and,
with --engine-model, compares it with the engine in-process (timed before the load, not during it).
Each prints tables and ratios; --json writes the raw figures, --plots PNG charts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from ovembed.evaluate import peers
from ovembed.workload import percentiles

DEFAULT_BACKENDS = ("pytorch", "onnx-fp32", "onnx-int8", "int8-weights", "int8")
DEFAULT_CORPUS = Path(__file__).resolve().parents[4] / "shared" / "data" / "xquad" / "en" / "corpus.jsonl"
MAX_TIMED_RUNS = 200  # per shape: bounds a run on a fast model, --seconds bounds it on a slow one


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon (memory the process itself holds; the rest of RSS is mostly memory-mapped model files,
    clean pages the kernel can drop) and VmHWM (high-water RSS: unlike ru_maxrss not inherited across exec) of
    a process, in MB; empty if it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _anon_mb() -> float:
    return proc_status().get("RssAnon") or _rss_mb()


def _peak_mb() -> float:
    return proc_status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles_ms(times_ms: list[float]) -> dict[str, float]:
    return {f"{k}_ms": v for k, v in percentiles(times_ms).items()}


def _run_clients(client, n: int, start_line: threading.Barrier) -> float:
    """Run client(0..n-1) in threads that all pass `start_line` together; seconds from that line to the last."""
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _time_runs(run, seconds: float, min_runs: int, max_runs: int) -> list[float]:
    """Milliseconds of run(i) for i = 0, 1, …: at least min_runs, then until `seconds` or max_runs."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t0 = time.perf_counter()
        run(len(times))
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _token_ids(n_texts: int, n_tokens: int, vocab_high: int, seed: int) -> list[list[int]]:
    """Random ids between two special-looking ones: the speed of a text depends on its length only."""
    rng = np.random.default_rng(seed)
    return [[0, *rng.integers(5, vocab_high, n_tokens - 2).tolist(), 2] for _ in range(n_texts)]


# --- the worker: one backend in one process ------------------------------------------------------------


def _latency(run, tokens: int, plan: dict) -> dict:
    """p50/p95/p99 of one text of `tokens` tokens, a fresh text each run."""
    times = _time_runs(lambda i: run(_token_ids(1, tokens, plan["vocab_high"], i)), plan["seconds"], plan["min_runs"],
                       MAX_TIMED_RUNS)
    return {**_percentiles_ms(times), "runs": len(times)}


def _throughput(run, batch: int, plan: dict) -> dict:
    """Texts/s and tokens/s of `batch` texts per call, from the median call."""
    tokens = plan["throughput_tokens"]
    inputs = [_token_ids(batch, tokens, plan["vocab_high"], seed) for seed in range(4)]
    times = _time_runs(lambda i: run(inputs[i % len(inputs)]), plan["seconds"], min(3, plan["min_runs"]), 50)
    seconds = float(np.median(times)) / 1000
    return {"texts_per_s": round(batch / seconds, 2), "tokens_per_s": round(batch * tokens / seconds), "runs": len(times)}


def _concurrent(run, clients: int, plan: dict) -> dict:
    """`clients` threads, each embedding one text per call back to back for --seconds: texts/s and the
    latency each caller sees. Together they make at least --min-runs calls."""
    tokens, seconds = plan["throughput_tokens"], plan["seconds"]
    texts = _token_ids(64, tokens, plan["vocab_high"], seed=1)
    per_client = -(-plan["min_runs"] // clients)
    times: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        start_line.wait()
        deadline = time.perf_counter() + seconds
        try:
            while len(times[k]) < per_client or (time.perf_counter() < deadline and len(times[k]) < MAX_TIMED_RUNS):
                t0 = time.perf_counter()
                run([texts[(k + clients * len(times[k])) % len(texts)]])
                times[k].append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # re-raised in the main thread: a failed backend must not look fast
            failures.append(exc)

    wall = _run_clients(client, clients, start_line)
    if failures:
        raise failures[0]
    calls = [t for per in times for t in per]
    return {**_percentiles_ms(calls), "texts_per_s": round(len(calls) / wall, 2),
            "tokens_per_s": round(len(calls) * tokens / wall), "runs": len(calls)}


def _corpus(run, ids: list[list[int]], plan: dict) -> dict:
    """Whole passes over real paragraphs in length-sorted batches (as FlagEmbedding and
    sentence-transformers order them); tokens/s counts real tokens, not padding."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    size = plan["corpus_batch"]
    batches = [[ids[i] for i in order[s:s + size]] for s in range(0, len(order), size)]
    run(batches[0])  # warm-up on the longest and the shortest shapes
    run(batches[-1])
    passes = _time_runs(lambda _: [run(b) for b in batches], plan["seconds"], 1, 20)
    seconds = float(np.median(passes)) / 1000
    tokens = sum(len(x) for x in ids)
    return {"texts": len(ids), "tokens": tokens, "batch": size, "passes": len(passes),
            "seconds_per_pass": round(seconds, 3), "texts_per_s": round(len(ids) / seconds, 2),
            "tokens_per_s": round(tokens / seconds)}


def _worker(args: argparse.Namespace) -> None:
    """One backend in this process: load, warm up, time every workload; print one JSON object."""
    plan = json.loads(Path(args.plan).read_text())
    started = time.perf_counter()
    run, runner, batched = peers.load(plan["backend"], Path(plan["path"]), plan["pad_id"], plan["hint"])
    figures: dict[str, object] = {"runner": runner, "load_s": round(time.perf_counter() - started, 2),
                                  "rss_after_load_mb": round(_rss_mb())}
    run(_token_ids(1, 16, plan["vocab_high"], 0))
    run(_token_ids(max(plan["batches"]), plan["throughput_tokens"], plan["vocab_high"], 0))
    figures["rss_after_warmup_mb"] = round(_rss_mb())
    figures["anon_after_warmup_mb"] = round(_anon_mb())
    figures["latency"] = {str(t): _latency(run, t, plan) for t in plan["latency_tokens"]}
    figures["batch"] = {str(b): _throughput(run, b, plan) for b in plan["batches"]}
    concurrent_run = batched() if batched else run
    figures["concurrency"] = {str(c): _concurrent(concurrent_run, c, plan) for c in plan["concurrency"]}
    if plan["corpus_ids"]:
        figures["corpus"] = _corpus(run, plan["corpus_ids"], plan)
    figures["peak_rss_mb"] = round(_peak_mb())
    if plan["long"]:
        t0 = time.perf_counter()
        run(_token_ids(1, plan["long"], plan["vocab_high"], 0))
        figures["long"] = {"tokens": plan["long"], "seconds": round(time.perf_counter() - t0, 2),
                           "peak_rss_mb": round(_peak_mb())}
    print(json.dumps(figures))


# --- the parent: models, plans, children, report -------------------------------------------------------


def _ensure_openvino(source: Path, precision: str, cache: Path) -> Path:
    from ovembed.convert.pipeline import run_quantize

    folder = cache / f"{source.name}-{precision}"
    if not (folder / "ovembed.json").is_file():
        print(f"[bench] quantizing {source} -> {folder}", file=sys.stderr, flush=True)
        # Random weights have no meaningful accuracy to gate; speed is what is measured here.
        run_quantize(str(source), output=folder, precision=precision, gate=False)
    return folder


def _backend_path(backend: str, source: Path, cache: Path) -> Path:
    if backend == "pytorch":
        return source
    if backend in peers.ONNX_BACKENDS:
        return peers.ensure_onnx(source, backend, cache)
    return _ensure_openvino(source, backend, cache)


def _run_child(plan: dict) -> dict:
    """The worker in a fresh interpreter; its last stdout line is the figures, or the error is."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-plan-") as f:
        json.dump(plan, f)
        f.flush()
        print(f"[bench] {plan['backend']} {plan['path']} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "ovembed.evaluate.bench", "_worker", "--plan", f.name],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _read_corpus(path: Path, limit: int) -> list[str]:
    """Paragraph texts of a BEIR-style corpus.jsonl; with `limit`, that many spread over the file."""
    try:
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"bench engine: cannot read the corpus {path} (one JSON object with a 'text' per line): {exc}")
    if not texts:
        sys.exit(f"bench engine: the corpus {path} has no texts")
    if limit and limit < len(texts):
        texts = [texts[i] for i in np.linspace(0, len(texts) - 1, limit).round().astype(int)]
    return texts


def _corpus_ids(source: Path, texts: list[str]) -> list[list[int]]:
    """The texts through the model's own tokenizer, truncated at its max length as its library would."""
    from transformers import AutoTokenizer

    from ovembed.convert.export import inspect_source

    max_length = inspect_source(source, str(source), None, None).max_length
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _source(args: argparse.Namespace) -> Path:
    if args.bge_m3_architecture:
        from ovembed.convert.synthetic import BGE_M3_ARCHITECTURE, build_m3_layout_model

        source = Path(args.cache) / "bge-m3-architecture-random"
        if not (source / "sparse_linear.pt").is_file():
            print(f"[bench] building a random-weight BGE-M3 architecture model in {source}", file=sys.stderr)
            build_m3_layout_model(source, **BGE_M3_ARCHITECTURE)
        return source
    if not args.source:
        sys.exit("bench engine: give a source model folder or --bge-m3-architecture")
    source = Path(args.source)
    if not (source / "config.json").is_file():
        sys.exit(f"bench engine: {source} is not a Hugging Face model folder (no config.json)")
    return source


def _plan(args: argparse.Namespace, source: Path, corpus_ids: list[list[int]] | None) -> dict:
    """What every worker runs: the same shapes, the same ids."""
    config = json.loads((source / "config.json").read_text())
    return {"pad_id": int(config.get("pad_token_id") or 0), "vocab_high": min(int(config["vocab_size"]), 1000),
            "hint": args.hint, "seconds": args.seconds, "min_runs": args.min_runs, "latency_tokens": args.latency_tokens,
            "batches": args.batches, "throughput_tokens": args.throughput_tokens, "concurrency": args.concurrency,
            "corpus_ids": corpus_ids, "corpus_batch": args.corpus_batch}


def _long_for(backend: str, args: argparse.Namespace) -> int:
    if backend == "pytorch":
        return args.long_pytorch
    return args.long if backend in peers.OPENVINO_BACKENDS else 0


def _speedups(ours: dict, peer: dict) -> dict:
    """How many times faster ours is than the peer (> 1: ours is faster): latency as the peer's p50 over
    ours, throughput as ours over the peer's."""
    def ratio(a: float, b: float) -> float:
        return round(a / b, 2)

    out: dict[str, object] = {
        "latency_p50": {t: ratio(peer["latency"][t]["p50_ms"], r["p50_ms"]) for t, r in ours["latency"].items()},
        "batch_texts_per_s": {b: ratio(r["texts_per_s"], peer["batch"][b]["texts_per_s"]) for b, r in ours["batch"].items()},
        "concurrency_texts_per_s": {c: ratio(r["texts_per_s"], peer["concurrency"][c]["texts_per_s"])
                                    for c, r in ours["concurrency"].items()},
    }
    if "corpus" in ours and "corpus" in peer:
        out["corpus_tokens_per_s"] = ratio(ours["corpus"]["tokens_per_s"], peer["corpus"]["tokens_per_s"])
    return out


def _ratios(results: dict[str, dict]) -> dict[str, dict]:
    ours = results.get(peers.OURS)
    if ours is None or "error" in ours:
        return {}
    return {name: _speedups(ours, r) for name, r in results.items() if name != peers.OURS and "error" not in r}


def _ratio_lines(ratios: dict[str, dict]) -> list[str]:
    lines = []
    for peer, r in ratios.items():
        parts = ["latency p50 " + ", ".join(f"1x{t} {v}x" for t, v in r["latency_p50"].items()),
                 "batch throughput " + ", ".join(f"b{b} {v}x" for b, v in r["batch_texts_per_s"].items()),
                 "concurrent callers " + ", ".join(f"c{c} {v}x" for c, v in r["concurrency_texts_per_s"].items())]
        if "corpus_tokens_per_s" in r:
            parts.append(f"corpus tokens/s {r['corpus_tokens_per_s']}x")
        lines.append(f"ours (int8) vs {peer} ({peers.LABELS[peer]}): " + "; ".join(parts))
    return lines


def _markdown(head: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _tables(results: dict[str, dict]) -> list[str]:
    """Memory, latency, throughput and concurrency tables (markdown, as pasted into docs/)."""
    ok = {name: r for name, r in results.items() if "error" not in r}
    tables = []
    if ok:
        any_r = next(iter(ok.values()))
        has_long = any("long" in r for r in ok.values())
        memory = []
        for name, r in ok.items():
            row = [name, r["load_s"], r["rss_after_load_mb"], f"{r['rss_after_warmup_mb']} ({r['anon_after_warmup_mb']})",
                   r["peak_rss_mb"]]
            if has_long:
                long = r.get("long")
                row += [f"{long['tokens']}: {long['seconds']} s, {long['peak_rss_mb']} MB" if long else "–"]
            memory.append(row)
        tables.append(_markdown(["backend", "load s", "RSS load MB", "RSS warm MB (anon)", "peak MB"]
                                + (["one long text"] if has_long else []), memory))
        tables.append(_markdown(["backend"] + [f"1x{t} p50 / p95 / p99 ms" for t in any_r["latency"]],
                                [[name] + [f"{x['p50_ms']} / {x['p95_ms']} / {x['p99_ms']}" for x in r["latency"].values()]
                                 for name, r in ok.items()]))
        corpus = "corpus" in any_r
        tables.append(_markdown(
            ["backend"] + [f"batch {b}: texts/s (tokens/s)" for b in any_r["batch"]]
            + ([f"corpus ({any_r['corpus']['texts']} texts, {any_r['corpus']['tokens']} tokens): texts/s", "tokens/s"]
               if corpus else []),
            [[name] + [f"{x['texts_per_s']} ({x['tokens_per_s']})" for x in r["batch"].values()]
             + ([r["corpus"]["texts_per_s"], r["corpus"]["tokens_per_s"]] if corpus else []) for name, r in ok.items()]))
        tables.append(_markdown(["backend"] + [f"callers={c}: texts/s (p50 / p99 ms)" for c in any_r["concurrency"]],
                                [[name] + [f"{x['texts_per_s']} ({x['p50_ms']} / {x['p99_ms']})"
                                           for x in r["concurrency"].values()] for name, r in ok.items()]))
    failed = [f"{name}: error: {r['error']}" for name, r in results.items() if "error" in r]
    return tables + (["\n".join(failed)] if failed else [])


def _engine(args: argparse.Namespace) -> None:
    source = _source(args)
    cache = Path(args.cache)
    corpus_path = Path(args.corpus) if args.corpus else None
    if corpus_path and not corpus_path.is_file():
        sys.exit(f"bench engine: no corpus file {corpus_path} (give --corpus FILE, or --corpus '' to skip it)")
    corpus_ids = _corpus_ids(source, _read_corpus(corpus_path, args.corpus_texts)) if corpus_path else None
    plan = _plan(args, source, corpus_ids)
    results: dict[str, dict] = {}
    for backend in args.backends:
        try:
            path = _backend_path(backend, source, cache)
        except Exception as exc:  # one peer that cannot be built must not cost the others' figures
            results[backend] = {"error": f"cannot prepare {backend}: {type(exc).__name__}: {exc}"}
            continue
        results[backend] = _run_child({**plan, "backend": backend, "path": str(path), "long": _long_for(backend, args)})
    ratios = _ratios(results)
    report = {"machine": machine(), "name": args.name or source.name, "source": str(source),
              "corpus": str(corpus_path) if corpus_path else None,
              "workload": {k: v for k, v in plan.items() if k != "corpus_ids"}, "labels": peers.LABELS, "ours": peers.OURS,
              "results": results, "ratios": ratios, "command": args.command_line}
    print(f"machine: {report['machine']}")
    print(f"model: {report['name']} from {source}   (every backend in its own process, on the same token ids)")
    for name, r in results.items():
        if "runner" in r:
            print(f"  {name}: {peers.LABELS[name]} — {r['runner']}")
    for table in _tables(results):
        print()
        print(table)
    print()
    for line in _ratio_lines(ratios) or ["no ratios: ours (int8) was not run or failed"]:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plots:
        from ovembed.evaluate.plots import engine_plots

        for path in engine_plots(report, Path(args.plots)):
            print(f"plot: {path}")


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
    return {"cpu": cpu, "cores": peers.cores(), "isa": isa, "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version()}


# --- http: a running service under concurrent clients ------------------------------------------------

HTTP_TEXTS = 256  # distinct texts per token count, so no request repeats a recent one
HTTP_TIMEOUT_S = 60.0
ENGINE_BATCH = 32


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
    from ovembed.workload import varied_texts

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

    wall = _run_clients(client, concurrency, start_line)
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
    report = {"machine": machine(), "url": url, "model": args.model, "seconds": args.seconds,
              "mean_tokens": {t: m for t, (_, m) in sized.items()}, "http": rows, "engine": engine,
              "comparison": comparison, "command": args.command_line}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plots:
        from ovembed.evaluate.plots import http_plots

        for path in http_plots(report, Path(args.plots)):
            print(f"plot: {path}")


def _backend_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in peers.LABELS]
    if not names or unknown:
        what = f"unknown backend {', '.join(unknown)}" if unknown else f"no backend in {text!r}"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(peers.LABELS)}")
    return list(dict.fromkeys(names))


def _check_engine_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Numbers argparse cannot bound by itself: refused with a usage message, not a traceback later."""
    for name in ("seconds", "min_runs", "throughput_tokens", "corpus_batch"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("corpus_texts", "long", "long_pytorch"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (off) or positive")
    if min(args.throughput_tokens, *args.latency_tokens, *(n for n in (args.long, args.long_pytorch) if n)) < 3:
        parser.error("texts need at least 3 tokens ([CLS] text [SEP])")


def main(argv: list[str] | None = None, prog: str = "python -m ovembed.evaluate.bench") -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="ours vs PyTorch, ONNX Runtime and OpenVINO peers: same weights, same token ids")
    e.add_argument("source", nargs="?", help="Hugging Face model folder (the weights to compare)")
    e.add_argument("--bge-m3-architecture", action="store_true", help="build and use a random-weight BGE-M3 (568M)")
    e.add_argument("--name", help="the model's name in the report and plots (default: the folder's name)")
    e.add_argument("--backends", type=_backend_names, default=list(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {', '.join(peers.LABELS)} (default {','.join(DEFAULT_BACKENDS)})")
    e.add_argument("--cache", default=".bench", help="where converted models and ONNX exports are kept between runs")
    e.add_argument("--seconds", type=float, default=5.0, help="time per measurement (at least --min-runs runs)")
    e.add_argument("--min-runs", type=int, default=10)
    e.add_argument("--latency-tokens", type=positive_ints, default=[16, 128, 512], help="1xN latency shapes (16,128,512)")
    e.add_argument("--batches", type=positive_ints, default=[1, 8, 32], help="throughput batch sizes (1,8,32)")
    e.add_argument("--throughput-tokens", type=int, default=128, help="tokens per text for batches and concurrency")
    e.add_argument("--concurrency", type=positive_ints, default=[1, 4], help="concurrent callers, one text each (1,4)")
    e.add_argument("--corpus", default=str(DEFAULT_CORPUS) if DEFAULT_CORPUS.is_file() else "",
                   help="corpus.jsonl of real paragraphs for tokens/s (default: XQuAD en from ../shared/data; '' skips)")
    e.add_argument("--corpus-texts", type=int, default=0, help="use this many paragraphs, spread over the file (0: all)")
    e.add_argument("--corpus-batch", type=int, default=32, help="texts per call on the length-sorted corpus")
    e.add_argument("--hint", default="LATENCY", choices=["LATENCY", "THROUGHPUT"], help="OpenVINO performance hint")
    e.add_argument("--long", type=int, default=0, help="also time one text of this many tokens (OpenVINO backends)")
    e.add_argument("--long-pytorch", type=int, default=0, help="the same for PyTorch (slow)")
    e.add_argument("--json", help="write the figures to this file")
    e.add_argument("--plots", help="write PNG plots into this folder")
    e.set_defaults(func=_engine)
    h = sub.add_parser("http", help="a running service under N concurrent clients (optionally vs the engine)")
    h.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8019")
    h.add_argument("--model", help="model name to ask for (default: the service's default)")
    h.add_argument("--concurrency", type=positive_ints, default=[1, 8, 32], help="clients, comma-separated (1,8,32)")
    h.add_argument("--tokens", type=positive_ints, default=[16, 128], help="tokens per text, comma-separated (16,128)")
    h.add_argument("--seconds", type=float, default=5.0, help="time per (concurrency, tokens) row")
    h.add_argument("--engine-model", help="also time this model folder in-process on the same texts, before the load")
    h.add_argument("--api-key", help="Bearer key (default: env OVEMBED_API_KEY)")
    h.add_argument("--json", help="write the figures to this file")
    h.add_argument("--plots", help="write PNG plots into this folder")
    h.set_defaults(func=_http)
    w = sub.add_parser("_worker")
    w.add_argument("--plan", required=True, help="JSON file written by `engine`")
    w.set_defaults(func=_worker)
    args = parser.parse_args(argv)
    args.command_line = f"{prog} {shlex.join(argv)}"
    if args.command == "engine":
        _check_engine_args(e, args)
    args.func(args)


if __name__ == "__main__":
    main()
