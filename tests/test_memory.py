"""Issue 6, memory: peak RSS of the worst merged call is bounded by the token budget (short form on the
tiny model); the long form is `python -m ovembed.evaluate.soak memory --model FOLDER`."""

from __future__ import annotations

from ovembed.evaluate.soak import fit_formula, memory_rows, memory_table, predicted_peak, run_memory


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
