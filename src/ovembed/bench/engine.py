"""`ovembed bench engine`: speed of ours against peers on the same weights and the same token ids.

Each backend (peers.py: PyTorch fp32, ONNX Runtime fp32 and dynamic int8, OpenVINO int8-weights, ours) runs in
its own child process, one after the other, so RSS after load and peak RSS belong to that backend alone and the
cores are not shared. Figures: latency percentiles per 1xN shape, throughput per batch size and per number of
concurrent callers, and with --corpus tokens/s on real mixed-length paragraphs (e.g. XQuAD)."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovembed.bench import peers
from ovembed.bench.common import (
    anon_mb,
    machine,
    markdown,
    peak_mb,
    percentiles_ms,
    rss_mb,
    run_child,
    run_clients,
    time_runs,
)
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.manifest import Manifest

DEFAULT_BACKENDS = ("pytorch", "onnx-fp32", "onnx-int8", "int8-weights", "int8")
MAX_TIMED_RUNS = 200  # per shape: bounds a run on a fast model, --seconds bounds it on a slow one


@dataclass
class EngineOptions:
    source: Path | None = None  # a Hugging Face model folder; None with bge_m3_architecture
    bge_m3_architecture: bool = False  # build and use a random-weight BGE-M3 (568M)
    outliers: bool = False  # measure a copy of the source with outlier channels (synthetic.BENCH_OUTLIERS)
    name: str | None = None
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    cache: Path = Path(".bench")
    seconds: float = 5.0
    min_runs: int = 10
    latency_tokens: list[int] = field(default_factory=lambda: [16, 128, 512])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    throughput_tokens: int = 128
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    corpus: Path | None = None  # corpus.jsonl of real paragraphs; None skips the tokens/s part
    corpus_texts: int = 0
    corpus_batch: int = 32
    hint: str = "LATENCY"
    long: int = 0
    long_pytorch: int = 0
    command: str = ""


def _token_ids(n_texts: int, n_tokens: int, vocab_high: int, seed: int) -> list[list[int]]:
    """Random ids between two special-looking ones: the speed of a text depends on its length only."""
    rng = np.random.default_rng(seed)
    return [[0, *rng.integers(5, vocab_high, n_tokens - 2).tolist(), 2] for _ in range(n_texts)]


# --- the worker: one backend in one process ------------------------------------------------------------


def _latency(run, tokens: int, plan: dict) -> dict:
    """p50/p95/p99 of one text of `tokens` tokens, a fresh text each run."""
    times = time_runs(lambda i: run(_token_ids(1, tokens, plan["vocab_high"], i)), plan["seconds"], plan["min_runs"],
                      MAX_TIMED_RUNS)
    return {**percentiles_ms(times), "runs": len(times)}


def _throughput(run, batch: int, plan: dict) -> dict:
    """Texts/s and tokens/s of `batch` texts per call, from the median call."""
    tokens = plan["throughput_tokens"]
    inputs = [_token_ids(batch, tokens, plan["vocab_high"], seed) for seed in range(4)]
    times = time_runs(lambda i: run(inputs[i % len(inputs)]), plan["seconds"], min(3, plan["min_runs"]), 50)
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

    wall = run_clients(client, clients, start_line)
    if failures:
        raise failures[0]
    calls = [t for per in times for t in per]
    return {**percentiles_ms(calls), "texts_per_s": round(len(calls) / wall, 2),
            "tokens_per_s": round(len(calls) * tokens / wall), "runs": len(calls)}


def _corpus(run, ids: list[list[int]], plan: dict) -> dict:
    """Whole passes over real paragraphs in length-sorted batches (as FlagEmbedding and
    sentence-transformers order them); tokens/s counts real tokens, not padding."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    size = plan["corpus_batch"]
    batches = [[ids[i] for i in order[s:s + size]] for s in range(0, len(order), size)]
    run(batches[0])  # warm-up on the longest and the shortest shapes
    run(batches[-1])
    passes = time_runs(lambda _: [run(b) for b in batches], plan["seconds"], 1, 20)
    seconds = float(np.median(passes)) / 1000
    tokens = sum(len(x) for x in ids)
    return {"texts": len(ids), "tokens": tokens, "batch": size, "passes": len(passes),
            "seconds_per_pass": round(seconds, 3), "texts_per_s": round(len(ids) / seconds, 2),
            "tokens_per_s": round(tokens / seconds)}


def worker(plan: dict) -> dict:
    """One backend in this process (`run_child`): load, warm up, time every workload."""
    started = time.perf_counter()
    run, runner, batched = peers.load(plan["backend"], Path(plan["path"]), plan["pad_id"], plan["hint"])
    figures: dict[str, object] = {"runner": runner, "load_s": round(time.perf_counter() - started, 2),
                                  "rss_after_load_mb": round(rss_mb())}
    run(_token_ids(1, 16, plan["vocab_high"], 0))
    run(_token_ids(max(plan["batches"]), plan["throughput_tokens"], plan["vocab_high"], 0))
    figures["rss_after_warmup_mb"] = round(rss_mb())
    figures["anon_after_warmup_mb"] = round(anon_mb())
    figures["latency"] = {str(t): _latency(run, t, plan) for t in plan["latency_tokens"]}
    figures["batch"] = {str(b): _throughput(run, b, plan) for b in plan["batches"]}
    concurrent_run = batched() if batched else run
    figures["concurrency"] = {str(c): _concurrent(concurrent_run, c, plan) for c in plan["concurrency"]}
    if plan["corpus_ids"]:
        figures["corpus"] = _corpus(run, plan["corpus_ids"], plan)
    figures["peak_rss_mb"] = round(peak_mb())
    if plan["long"]:
        t0 = time.perf_counter()
        run(_token_ids(1, plan["long"], plan["vocab_high"], 0))
        figures["long"] = {"tokens": plan["long"], "seconds": round(time.perf_counter() - t0, 2),
                           "peak_rss_mb": round(peak_mb())}
    return figures


# --- the parent: models, plans, children ---------------------------------------------------------------


# OpenVINO backend -> (precision, gate). Gate off: the precision's plain recipe, kept whatever its accuracy (speed is
# what is measured); int8-adapted is int8 as `ovembed quantize` makes it, adapted until it passes the gate.
OPENVINO_RECIPES = {"fp32": ("fp32", False), "int8-weights": ("int8-weights", False), "int8": ("int8", False),
                    "int8-adapted": ("int8", True)}


def _ensure_openvino(source: Path, backend: str, cache: Path) -> Path:
    from ovembed.convert.pipeline import run_quantize

    folder = cache / f"{source.name}-{backend}"
    if not (folder / "ovembed.json").is_file():
        print(f"[bench] quantizing {source} -> {folder}", file=sys.stderr, flush=True)
        precision, gate = OPENVINO_RECIPES[backend]
        run_quantize(str(source), output=folder, precision=precision, gate=gate)
    return folder


def _backend_path(backend: str, source: Path, cache: Path) -> Path:
    if backend == "pytorch":
        return source
    if backend in peers.ONNX_BACKENDS:
        return peers.ensure_onnx(source, backend, cache)
    return _ensure_openvino(source, backend, cache)


def _read_corpus(path: Path, limit: int) -> list[str]:
    """Paragraph texts of a BEIR-style corpus.jsonl; with `limit`, that many spread over the file."""
    if not path.is_file():
        raise validation(f"no corpus file {path} (give --corpus FILE, or leave it out to skip the corpus)")
    try:
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise validation(f"cannot read the corpus {path} (one JSON object with a 'text' per line): {exc}") from None
    if not texts:
        raise validation(f"the corpus {path} has no texts")
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


def _source(opts: EngineOptions) -> Path:
    source = _base_source(opts)
    if not opts.outliers:
        return source
    from ovembed.convert.synthetic import BENCH_OUTLIERS, inject_outliers

    copy = Path(opts.cache) / f"{source.name}-outliers"
    if not (copy / "config.json").is_file():
        print(f"[bench] injecting outlier channels {BENCH_OUTLIERS} into {source} -> {copy}", file=sys.stderr)
        inject_outliers(source, copy, **BENCH_OUTLIERS)
    return copy


def _base_source(opts: EngineOptions) -> Path:
    if opts.bge_m3_architecture:
        from ovembed.convert.synthetic import BGE_M3_ARCHITECTURE, build_m3_layout_model

        source = Path(opts.cache) / "bge-m3-architecture-random"
        if not (source / "sparse_linear.pt").is_file():
            print(f"[bench] building a random-weight BGE-M3 architecture model in {source}", file=sys.stderr)
            build_m3_layout_model(source, **BGE_M3_ARCHITECTURE)
        return source
    if not opts.source:
        raise validation("give a source model folder or --bge-m3-architecture")
    source = Path(opts.source)
    if not (source / "config.json").is_file():
        raise OvembedError(ErrorKind.MODEL_INVALID, f"{source} is not a Hugging Face model folder (no config.json)")
    return source


def _plan(opts: EngineOptions, source: Path, corpus_ids: list[list[int]] | None) -> dict:
    """What every worker runs: the same shapes, the same ids."""
    config = json.loads((source / "config.json").read_text())
    return {"pad_id": int(config.get("pad_token_id") or 0), "vocab_high": min(int(config["vocab_size"]), 1000),
            "hint": opts.hint, "seconds": opts.seconds, "min_runs": opts.min_runs,
            "latency_tokens": opts.latency_tokens, "batches": opts.batches, "throughput_tokens": opts.throughput_tokens,
            "concurrency": opts.concurrency, "corpus_ids": corpus_ids, "corpus_batch": opts.corpus_batch}


def _long_for(backend: str, opts: EngineOptions) -> int:
    if backend == "pytorch":
        return opts.long_pytorch
    return opts.long if backend in peers.OPENVINO_BACKENDS else 0


def run_engine(opts: EngineOptions) -> dict:
    """Every backend on the same plan, one child process each; the report (figures, ratios, workload)."""
    source = _source(opts)
    corpus_ids = _corpus_ids(source, _read_corpus(Path(opts.corpus), opts.corpus_texts)) if opts.corpus else None
    plan = _plan(opts, source, corpus_ids)
    results: dict[str, dict] = {}
    adapted = None
    for backend in opts.backends:
        try:
            path = _backend_path(backend, source, Path(opts.cache))
        except Exception as exc:  # one peer that cannot be built must not cost the others' figures
            results[backend] = {"error": f"cannot prepare {backend}: {type(exc).__name__}: {exc}"}
            continue
        print(f"[bench] {backend} {path} ...", file=sys.stderr, flush=True)
        results[backend] = run_child("ovembed.bench.engine:worker",
                                     {**plan, "backend": backend, "path": str(path), "long": _long_for(backend, opts)})
        if backend == "int8-adapted":
            adapted = Manifest.read(path).quantization
    return {"machine": machine(), "name": opts.name or source.name, "source": str(source), "adapted": adapted,
            "corpus": str(opts.corpus) if opts.corpus else None,
            "workload": {k: v for k, v in plan.items() if k != "corpus_ids"}, "labels": peers.LABELS,
            "ours": peers.OURS, "results": results, "ratios": _ratios(results), "command": opts.command}


# --- the report ----------------------------------------------------------------------------------------


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


def _tables(results: dict[str, dict]) -> list[str]:
    """Memory, latency, throughput and concurrency tables (markdown, as pasted into docs/)."""
    ok = {name: r for name, r in results.items() if "error" not in r}
    failed = [f"{name}: error: {r['error']}" for name, r in results.items() if "error" in r]
    if not ok:
        return ["\n".join(failed)] if failed else []
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
    corpus = "corpus" in any_r
    tables = [
        markdown(["backend", "load s", "RSS load MB", "RSS warm MB (anon)", "peak MB"]
                 + (["one long text"] if has_long else []), memory),
        markdown(["backend"] + [f"1x{t} p50 / p95 / p99 ms" for t in any_r["latency"]],
                 [[name] + [f"{x['p50_ms']} / {x['p95_ms']} / {x['p99_ms']}" for x in r["latency"].values()]
                  for name, r in ok.items()]),
        markdown(["backend"] + [f"batch {b}: texts/s (tokens/s)" for b in any_r["batch"]]
                 + ([f"corpus ({any_r['corpus']['texts']} texts, {any_r['corpus']['tokens']} tokens): texts/s",
                     "tokens/s"] if corpus else []),
                 [[name] + [f"{x['texts_per_s']} ({x['tokens_per_s']})" for x in r["batch"].values()]
                  + ([r["corpus"]["texts_per_s"], r["corpus"]["tokens_per_s"]] if corpus else [])
                  for name, r in ok.items()]),
        markdown(["backend"] + [f"callers={c}: texts/s (p50 / p99 ms)" for c in any_r["concurrency"]],
                 [[name] + [f"{x['texts_per_s']} ({x['p50_ms']} / {x['p99_ms']})" for x in r["concurrency"].values()]
                  for name, r in ok.items()]),
    ]
    return tables + (["\n".join(failed)] if failed else [])


def engine_text(report: dict) -> str:
    """What a person reads: the machine, each backend's runner, the tables and the ratios."""
    results = report["results"]
    lines = [f"machine: {report['machine']}",
             f"model: {report['name']} from {report['source']}   (every backend in its own process, on the same "
             "token ids)"]
    lines += [f"  {name}: {peers.LABELS[name]} — {r['runner']}" for name, r in results.items() if "runner" in r]
    if not report["corpus"]:
        lines.append("corpus: none (pass --corpus FILE.jsonl, e.g. XQuAD's corpus.jsonl, for tokens/s on real "
                     "paragraphs)")
    for table in _tables(results):
        lines += ["", table]
    lines += ["", *(_ratio_lines(report["ratios"]) or ["no ratios: ours (int8) was not run or failed"])]
    return "\n".join(lines + _adapted_lines(results, report.get("adapted")))


def _adapted_lines(results: dict[str, dict], adapted: dict | None) -> list[str]:
    """int8-adapted beside full int8: what the adaptation kept float and what it costs in speed."""
    full, mine = results.get(peers.OURS, {"error": ""}), results.get("int8-adapted", {"error": ""})
    if not adapted or "error" in full or "error" in mine:
        return []
    line = (f"int8-adapted ({adapted['step']}: {adapted['int8_layers']} of {adapted['linear_layers']} linear layers "
            f"INT8) against full int8:")
    for t in mine["latency"]:
        if t in full["latency"]:
            line += f" 1x{t} p50 {mine['latency'][t]['p50_ms']} vs {full['latency'][t]['p50_ms']} ms;"
    for b in mine["batch"]:
        if b in full["batch"]:
            share = mine["batch"][b]["texts_per_s"] / full["batch"][b]["texts_per_s"]
            line += f" batch {b} {share:.0%} of int8's texts/s;"
    return ["", line.rstrip(";")]
