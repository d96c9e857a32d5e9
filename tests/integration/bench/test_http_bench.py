"""`ovembed bench http` against a real service: a short run, zero errors, and the
HTTP-vs-engine comparison when an engine model is given."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from cli_runner import run_cli
from ovembed.bench.common import LocalServer as Server
from ovembed.bench.common import free_port


@pytest.fixture(scope="module")
def service(minilm_int8):
    with Server([minilm_int8]) as server:
        yield server


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OVEMBED_API_KEY"}
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "bench", "http", *args], capture_output=True,
                          text=True, env=env, timeout=180)


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| concurrency")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
def test_http_bench_short_run_has_no_errors_and_compares_with_the_engine(service, minilm_int8, tmp_path):
    out = tmp_path / "http.json"
    proc = run_bench("--url", service.url, "--seconds", "1", "--concurrency", "1,4", "--tokens", "16",
                     "--engine-model", str(minilm_int8), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [(r[0], r[1]) for r in rows] == [("1", "16"), ("4", "16")]
    for _, _, requests, errors, p50, p95, p99, rps, tps in rows:
        assert int(requests) > 0 and errors == "0"
        assert 0 < float(p50) <= float(p95) <= float(p99)
        assert float(tps) == float(rps) > 0  # one text per request, none failed
    assert re.search(r"^HTTP p50 1x16 = [\d.]+ ms vs engine [\d.]+ ms \([+-][\d.]+ ms\)$", proc.stdout, re.M)
    assert re.search(r"^HTTP throughput at concurrency 4 x 16 tokens = [\d.]+ texts/s = \d+% of engine batch-32 "
                     r"[\d.]+ texts/s$", proc.stdout, re.M)
    report = json.loads(out.read_text())
    assert [r["errors"] for r in report["http"]] == [0, 0]
    assert abs(report["mean_tokens"]["16"] - 16) <= 2  # texts sized with the service's /tokenize
    assert report["engine"]["16"]["p50_ms"] > 0 and report["engine"]["16"]["batch32_texts_per_s"] > 0


def test_http_bench_without_engine_model_prints_no_comparison(service):
    proc = run_bench("--url", service.url, "--seconds", "0.5", "--concurrency", "2", "--tokens", "16")
    assert proc.returncode == 0, proc.stderr
    assert [r[3] for r in table_rows(proc.stdout)] == ["0"]
    assert "vs engine" not in proc.stdout and "of engine" not in proc.stdout


def test_http_bench_exits_with_a_message_when_nothing_listens():
    proc = run_cli("bench", "http", "--url", f"http://127.0.0.1:{free_port()}", "--seconds", "0.5",
                   env={"OVEMBED_API_KEY": None})
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr and "Traceback" not in proc.stderr
