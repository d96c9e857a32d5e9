"""`ovembed bench memory`: peak memory under the worst batch a setting allows, and the sizing formula.

For each setting (token budget x infer requests) a child process loads the model, records RSS idle and after
warm-up, then runs the worst merged call those settings allow and records the high-water RSS (VmHWM, reset
after warm-up). The report has a row per setting and the formula fitted over them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovembed.bench.common import machine, markdown, proc_status, run_child
from ovembed.errors import validation

BATCH_LENGTH = 512  # the budget's attention limit is tokens x 512: at this length both limits bind at once
DISPATCH_BUDGETS = 4  # the batcher merges up to 4 token budgets into one engine call


def _vm(key: str) -> float:
    return proc_status().get(key, float("nan"))


def worker(plan: dict) -> dict:
    """One setting in this process (`run_child`): load, warm up, reset the high-water mark, run the worst call."""
    from ovembed.engine import EmbeddingModel, TokenBudget
    from ovembed.engine.batcher import plan_batches

    t0 = time.perf_counter()
    budget = TokenBudget(tokens=plan["batch_tokens"], attention=plan["batch_tokens"] * 512)
    model = EmbeddingModel(Path(plan["model"]), budget=budget, infer_requests=plan["infer_requests"],
                           lanes=plan.get("lanes", 1))
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
    texts = ids(plan["texts"], plan["length"])
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
    model.release_buffers()  # what an idle lane of the service does (TokenBudgetBatcher: IDLE_RELEASE_S)
    figures["released_mb"] = round(_vm("VmRSS"), 1)
    return figures


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
               max_length: int | None = None, progress=None, lanes: int = 1) -> dict:
    from ovembed.manifest import Manifest

    say = progress or (lambda message: None)
    if not (Path(model) / "ovembed.json").is_file():
        raise validation(f"{model} is not a model folder (no ovembed.json); make one with `ovembed quantize`")
    manifest = Manifest.read(model)
    length = min(max_length or manifest.max_length, manifest.max_length)
    rows = memory_rows(length, budgets, infer_requests, scenarios)
    for row in rows:
        say(f"memory: budget {row.batch_tokens}, {row.infer_requests} infer requests, {row.scenario}: "
            f"{row.texts} x {row.length} tokens ...")
        row.figures = run_child("ovembed.bench.memory:worker", {
            "model": str(model), "batch_tokens": row.batch_tokens, "infer_requests": row.infer_requests,
            "texts": row.texts, "length": row.length, "lanes": lanes})
    fit = fit_formula(rows)
    report = {"model": str(model), "max_length": length, "lanes": lanes, "rows": [
        {"batch_tokens": r.batch_tokens, "infer_requests": r.infer_requests, "scenario": r.scenario, "texts": r.texts,
         "length": r.length, "in_flight": r.in_flight if "batches" in r.figures else None, **r.figures} for r in rows],
        "fit": fit}
    if fit:
        report["bounds"] = [{"batch_tokens": b, "predicted_peak_mb": round(predicted_peak(fit, b, length))}
                            for b in budgets]

    report["machine"] = machine()
    return report


def memory_table(report: dict) -> str:
    rows = []
    for r in report["rows"]:
        what = [r["batch_tokens"], r["infer_requests"], r["scenario"], f"{r['texts']} x {r['length']}"]
        if "error" in r:
            rows.append([*what, f"error: {r['error']}"])
            continue
        rows.append([*what, r["batches"], r["batch_texts"], r["load_s"], r["idle_mb"], r["warm_mb"], r["peak_mb"],
                     f"{r['peak_mb'] - r['warm_mb']:.1f}", r["after_mb"], r.get("released_mb", "–"), r["seconds"]])
    lines = [f"lanes (runtimes per model): {report.get('lanes', 1)}; idle again: after the lane gave back its buffers", "",
             markdown(["budget tokens", "infer requests", "scenario", "texts x tokens", "batches", "texts/batch",
                       "load s", "idle MB", "warm MB", "peak MB", "peak - warm MB", "after MB", "idle again MB",
                       "seconds"], rows)]
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
