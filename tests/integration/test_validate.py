"""`ovembed validate` against a real service: passes when healthy, fails with exit 1 and a clear row
(never a traceback) when the model, dimension, latency, key or the service itself is not as expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_runner import run_cli
from ovembed.bench.common import LocalServer as Server
from ovembed.bench.common import free_port

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
CHECKS = ["reachable", "models/status", "model", "dimension", "embedding length", "finite values", "unit norm",
          "distinct texts", "latency"]


@pytest.fixture(scope="module")
def service(minilm_int8):
    with Server([minilm_int8]) as server:
        yield server


def run_validate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "OVEMBED_API_KEY"}
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "validate", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=120)


def report_of(proc: subprocess.CompletedProcess) -> tuple[dict, dict[str, dict]]:
    report = json.loads(proc.stdout)
    return report, {c["name"]: c for c in report["checks"]}


def test_validate_passes_against_a_healthy_service(service):
    proc = run_validate("--url", service.url, "--expect-model", MINILM_ID, "--expect-dim", "384",
                        "--queries", "20", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report, checks = report_of(proc)
    assert report["passed"] is True and report["url"] == service.url
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert all(c["passed"] for c in report["checks"])
    assert checks["model"]["value"].startswith(MINILM_ID) and checks["dimension"]["value"] == "384"
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_validate_table_accepts_the_folder_name_as_model_and_ends_with_pass(service):
    proc = run_validate("--url", service.url, "--expect-model", "minilm-int8", "--queries", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")] == ["check", "result", "value", "expected"]
    assert all(line.count(" | ") == 3 for line in [lines[0], *lines[2:-1]])
    assert [line.split(" | ")[0].strip() for line in lines[2:-1]] == CHECKS
    assert lines[-1].startswith(f"PASS: {service.url}")


def test_validate_fails_when_the_dimension_is_not_the_expected_one(service):
    proc = run_validate("--url", service.url, "--expect-dim", "1024", "--queries", "5", "--json")
    assert proc.returncode == 1
    report, checks = report_of(proc)
    assert report["passed"] is False
    assert checks["dimension"] == {"name": "dimension", "passed": False, "value": "384", "expected": "1024"}
    assert [name for name, c in checks.items() if not c["passed"]] == ["dimension"]


def test_validate_fails_when_the_model_is_not_the_expected_one(service):
    proc = run_validate("--url", service.url, "--expect-model", "BAAI/bge-m3", "--queries", "5")
    assert proc.returncode == 1
    model_row = next(line for line in proc.stdout.splitlines() if line.startswith("model "))
    assert "FAIL" in model_row and MINILM_ID in model_row and "BAAI/bge-m3" in model_row
    assert proc.stdout.splitlines()[-1] == f"FAIL: {service.url} (model)"


def test_validate_fails_when_p95_latency_is_over_the_budget(service):
    proc = run_validate("--url", service.url, "--max-p95-ms", "0.001", "--queries", "5", "--json")
    assert proc.returncode == 1
    report, checks = report_of(proc)
    assert checks["latency"]["passed"] is False and checks["latency"]["expected"] == "p95 <= 0.001 ms"
    assert report["latency_ms"]["p95"] > 0.001


def test_validate_reports_an_unreachable_service_as_a_failed_check_without_traceback():
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_validate("--url", url, "--timeout", "2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cannot connect" in proc.stdout and "Connection refused" in proc.stdout
    assert proc.stdout.splitlines()[-1] == f"FAIL: {url} (reachable)"


def test_validate_rejects_a_url_without_scheme_as_usage_error():
    proc = run_cli("validate", "--url", "localhost:8019")
    assert proc.returncode == 2
    assert "--url must start with http://" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_needs_the_api_key_of_a_protected_service(minilm_int8):
    with Server([minilm_int8], env={"OVEMBED_API_KEYS": "secret"}) as server:
        without = run_validate("--url", server.url, "--queries", "5", "--json")
        with_flag = run_validate("--url", server.url, "--queries", "5", "--api-key", "secret")
        with_env = run_validate("--url", server.url, "--queries", "5", env={"OVEMBED_API_KEY": "secret"})
    assert without.returncode == 1
    _, checks = report_of(without)
    assert checks["reachable"]["passed"] is True  # /health is open
    assert checks["models/status"]["passed"] is False
    assert "HTTP 401" in checks["models/status"]["value"] and "--api-key" in checks["models/status"]["value"]
    assert "Traceback" not in without.stdout + without.stderr
    assert with_flag.returncode == 0, with_flag.stdout
    assert with_env.returncode == 0, with_env.stdout
