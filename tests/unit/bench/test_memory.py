"""Issue 6, memory: peak RSS of the worst merged call is bounded by the token budget (short form on the
tiny model); the long form is `ovembed bench memory --model FOLDER`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ovembed.bench.common import int8_dot_products
from ovembed.bench.memory import fit_formula, memory_rows, memory_table, predicted_peak, run_memory


@pytest.mark.slow
def test_peak_memory_grows_with_the_budget_and_the_fitted_formula_predicts_a_larger_budget(tiny_m3_fp32):
    report = run_memory(tiny_m3_fp32, budgets=[1024, 4096, 16384], infer_requests=[1, 2], scenarios=["batch"])
    print(memory_table(report))
    rows = {(r["batch_tokens"], r["infer_requests"]): r for r in report["rows"]}
    assert all("error" not in r and r["hwm_reset"] for r in rows.values()), report["rows"]
    extra = {key: r["peak_mb"] - r["warm_mb"] for key, r in rows.items()}
    # A full merged call is 4 budgets of 512-token texts, split into batches of the budget's size.
    assert [rows[(b, 1)]["batch_texts"] for b in (1024, 4096, 16384)] == [2, 8, 32]
    assert extra[(1024, 1)] < extra[(4096, 1)] < extra[(16384, 1)]
    assert extra[(16384, 1)] > 3 * extra[(4096, 1)] / 2  # 4x the budget: clearly more memory
    # A second infer request in flight does not double the peak (one OpenVINO stream, shared buffers).
    assert extra[(16384, 2)] < 1.3 * extra[(16384, 1)] + 10
    # Fitted on the two smaller budgets, the formula predicts the largest one: the measured growth over
    # warm stays under the prediction + 25% + 10 MB, and is not far below it (the bound is not vacuous).
    small = memory_rows(512, [1024, 4096], [1], ["batch"])
    for r in small:
        r.figures = rows[(r.batch_tokens, 1)]
    fit = fit_formula(small)
    assert fit is not None
    predicted_extra = predicted_peak(fit, 16384, 512) - fit["warm_mb"]
    measured_extra = rows[(16384, 1)]["peak_mb"] - fit["warm_mb"]
    assert 0.5 * predicted_extra <= measured_extra <= 1.25 * predicted_extra + 10, (measured_extra, predicted_extra)


_CACHE_CHILD = """
import json, os, sys
import numpy as np, psutil
from ovembed.engine import load_model
from ovembed.engine.runtime import limit_kernel_cache
model = load_model(sys.argv[1], kernel_cache=int(sys.argv[2]))
ids = [model.manifest.special_token_ids[0]] + [1000] * 256
call = lambda n, length: model.embed_tokens([ids[:length]] * n, ["dense"])
call(16, 256)
call(1, 16)
process = psutil.Process()
warm = process.memory_info().rss / 2**20
rng = np.random.default_rng(0)
for _ in range(int(sys.argv[3])):
    call(int(rng.integers(1, 33)), int(rng.integers(4, 257)))
print(json.dumps({"growth_mb": process.memory_info().rss / 2**20 - warm, "in_force": limit_kernel_cache(5),
                  "env": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")}))
"""


def _cache_child(folder, kernel_cache: int, calls: int = 150, env: dict[str, str] | None = None) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"} | (env or {})
    proc = subprocess.run([sys.executable, "-c", _CACHE_CHILD, str(folder), str(kernel_cache), str(calls)], env=full_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_kernel_cache_bounds_rss_growth_under_new_shapes(minilm_int8):
    # Real MiniLM weights, 150 calls of new shapes after warm-up. With oneDNN's default (1024 kernels) the
    # process grows by several hundred MB; capped, by a fraction of it (one run: +573 MB against +175 MB).
    default = _cache_child(minilm_int8, 1024)
    capped = _cache_child(minilm_int8, 32)
    assert (default["in_force"], default["env"]) == (1024, "1024")
    assert (capped["in_force"], capped["env"]) == (32, "32")  # set before the first compile; a later ask (5) is ignored
    if int8_dot_products():
        # The INT8 kernels this project targets (docs/reliability.md#the-kernel-cache): one per layer and shape.
        assert capped["growth_mb"] < 0.5 * default["growth_mb"], (capped, default)
    else:
        # On AVX2-only CPUs (seen: AMD EPYC) oneDNN builds other kernels and the cap saves less (this test, one run: +383 MB
        # against +440 MB); it must still save.
        assert capped["growth_mb"] < default["growth_mb"], (capped, default)
    assert default["growth_mb"] > 100, default  # the check would catch the unbounded default


def test_an_explicit_onednn_setting_in_the_environment_wins(minilm_int8):
    child = _cache_child(minilm_int8, 1024, calls=0, env={"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16"})
    assert (child["in_force"], child["env"]) == (16, "16")
