"""`ovembed bench engine` end to end: every backend (PyTorch via FlagEmbedding, ONNX Runtime
fp32 and dynamic int8, OpenVINO int8-weights, ours) on the tiny BGE-M3-layout model with tiny workloads.
It checks that the figures are complete and consistent, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_runner import run_cli
from conftest import int8_dot_products_saturate

BACKENDS = ["pytorch", "onnx-fp32", "onnx-int8", "int8-weights", "int8"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "bench", "engine", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def engine_run(tiny_m3_source, tiny_m3_int8, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cache = out / "cache"
    cache.mkdir()
    # The session's converted int8 folder, where bench looks for it: one conversion fewer.
    (cache / f"{tiny_m3_source.name}-int8").symlink_to(tiny_m3_int8, target_is_directory=True)
    proc = run_bench(str(tiny_m3_source), "--cache", str(cache), "--backends", ",".join(BACKENDS),
                     "--seconds", "0.05", "--min-runs", "3", "--latency-tokens", "8,32", "--batches", "1,4",
                     "--throughput-tokens", "16", "--concurrency", "1,2", "--corpus",
                     str(shared_data / "xquad" / "en" / "corpus.jsonl"), "--corpus-texts", "8", "--corpus-batch", "4",
                     "--json", str(out / "bench.json"), "--plots", str(out / "plots"))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "bench.json").read_text()), out / "plots"


@pytest.mark.slow
def test_every_backend_has_ordered_percentiles_and_positive_throughput(engine_run):
    _, report, _ = engine_run
    assert list(report["results"]) == BACKENDS
    for name, r in report["results"].items():
        assert "error" not in r, (name, r)
        assert list(r["latency"]) == ["8", "32"] and list(r["batch"]) == ["1", "4"] and list(r["concurrency"]) == ["1", "2"]
        for shape in r["latency"].values():
            assert 0 < shape["p50_ms"] <= shape["p95_ms"] <= shape["p99_ms"] and shape["runs"] >= 3
        for row in [*r["batch"].values(), *r["concurrency"].values()]:
            assert row["texts_per_s"] > 0 and row["tokens_per_s"] > 0
        for row in r["concurrency"].values():
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert r["corpus"]["texts"] == 8 and r["corpus"]["tokens"] > 8 * 3 and r["corpus"]["tokens_per_s"] > 0
        assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0
    assert "FlagEmbedding" in report["results"]["pytorch"]["runner"]
    assert report["command"].startswith("ovembed bench engine ")
    assert report["machine"]["cores"] >= 1


@pytest.mark.slow
def test_ratios_are_computed_from_the_figures(engine_run):
    proc, report, _ = engine_run
    results, ratios = report["results"], report["ratios"]
    ours = results["int8"]
    assert sorted(ratios) == sorted(b for b in BACKENDS if b != "int8")
    for peer, r in ratios.items():
        theirs = results[peer]
        for t, value in r["latency_p50"].items():
            assert value == round(theirs["latency"][t]["p50_ms"] / ours["latency"][t]["p50_ms"], 2)
        for b, value in r["batch_texts_per_s"].items():
            assert value == round(ours["batch"][b]["texts_per_s"] / theirs["batch"][b]["texts_per_s"], 2)
        for c, value in r["concurrency_texts_per_s"].items():
            assert value == round(ours["concurrency"][c]["texts_per_s"] / theirs["concurrency"][c]["texts_per_s"], 2)
        assert r["corpus_tokens_per_s"] == round(ours["corpus"]["tokens_per_s"] / theirs["corpus"]["tokens_per_s"], 2)
        assert f"ours (int8) vs {peer} (" in proc.stdout


@pytest.mark.slow
def test_plots_are_png_files(engine_run):
    _, _, plots = engine_run
    names = ["latency_vs_tokens.png", "throughput_vs_batch.png", "throughput_vs_concurrency.png",
             "corpus_tokens_per_s.png"]
    for name in names:
        data = (plots / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


@pytest.mark.parametrize(("args", "message"), [
    (["--backends", "pytorch,tensorrt"], "unknown backend tensorrt"),
    (["--corpus", "/nonexistent/corpus.jsonl"], "no corpus file /nonexistent/corpus.jsonl"),
    (["--seconds", "0"], "--seconds must be positive"),
])
def test_bad_input_is_a_message_not_a_traceback(tiny_m3_source, args, message):
    proc = run_cli("bench", "engine", str(tiny_m3_source), *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_folder_without_a_model_is_refused(tmp_path):
    proc = run_cli("bench", "engine", str(tmp_path))
    assert proc.returncode == 2  # an input error, in the one mapping of kinds to exit codes (was 1 before it)
    assert "not a Hugging Face model folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_outliers_bench_reports_the_adapted_model_beside_full_int8(tiny_m3_source, tmp_path):
    """`--outliers` measures a copy with synthetic.BENCH_OUTLIERS; int8-adapted is int8 as `ovembed quantize` makes
    it, which on that copy is not the plain recipe."""
    proc = run_bench(str(tiny_m3_source), "--outliers", "--cache", str(tmp_path), "--backends", "int8,int8-adapted",
                     "--seconds", "0.05", "--min-runs", "3", "--latency-tokens", "16", "--batches", "1,4",
                     "--throughput-tokens", "16", "--concurrency", "1", "--json", str(tmp_path / "bench.json"),
                     timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["source"].endswith(f"{tiny_m3_source.name}-outliers")
    assert all("error" not in r for r in report["results"].values()), report["results"]
    # Where INT8 dot products saturate (no VNNI) the outliers spoil plain INT8 and quantize adapts; elsewhere
    # plain INT8 passes and "adapted" is that same recipe.
    saturate = int8_dot_products_saturate()
    assert (report["adapted"]["step"] != "static int8") is saturate
    assert report["adapted"]["tried"][0]["passed"] is not saturate
    plain = json.loads((tmp_path / f"{tiny_m3_source.name}-outliers-int8" / "ovembed.json").read_text())
    assert plain["quantization"]["step"] == "static int8" and plain["verification"]["gate"]["passed"] is not saturate
    line = next(x for x in proc.stdout.splitlines() if x.startswith("int8-adapted ("))
    assert "against full int8: 1x16 p50" in line and "batch 4" in line and "of int8's texts/s" in line
