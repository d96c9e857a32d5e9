"""A service that loads its model on first use (--no-preload), reached by the names users type: `validate` waits
for the load (bounded by --load-timeout), `BAAI/bge-m3-base` is accepted with quantize's warning, and an unknown
route is `not_found`, not an unknown model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest

from ovembed.bench.common import LocalServer as Server
from ovembed.client import Client
from ovembed.errors import ErrorKind, OvembedError

BASE_WARNING = "'BAAI/bge-m3-base' does not exist; using 'BAAI/bge-m3'"
LAZY = {"OVEMBED_PRELOAD": "false"}


@pytest.fixture(scope="module")
def bge_m3_folder(tiny_m3_fp32, tmp_path_factory):
    """The tiny BGE-M3 layout model as a folder of BAAI/bge-m3 (what `ovembed quantize BAAI/bge-m3` records)."""
    folder = tmp_path_factory.mktemp("models") / "bge-m3-int8"
    shutil.copytree(tiny_m3_fp32, folder)
    manifest = json.loads((folder / "ovembed.json").read_text())
    (folder / "ovembed.json").write_text(json.dumps({**manifest, "source": "BAAI/bge-m3"}))
    return folder


def run_validate(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVEMBED_")}
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "validate", "--url", url, "--queries", "5",
                           "--max-p95-ms", "10000", "--json", *args], capture_output=True, text=True, env=env,
                          timeout=180)


def checks_of(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_validate_waits_for_a_model_loaded_on_first_use_and_accepts_bge_m3_base(bge_m3_folder):
    with Server([bge_m3_folder], env=LAZY) as server:
        before = httpx.get(server.url + "/models/status").json()
        assert before["embedding_loaded"] is False and before["models"][0]["state"] == "not_loaded"
        proc = run_validate(server.url, "--expect-model", "BAAI/bge-m3-base", "--expect-dim", "64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = checks_of(proc)
    assert all(c["passed"] for c in checks.values()), checks
    status = checks["models/status"]["value"]
    assert status.startswith("BAAI/bge-m3 loaded (fp32); waited ") and status.endswith(" s for it to load")
    assert checks["model"]["expected"] == "BAAI/bge-m3-base" and checks["model"]["value"].startswith("BAAI/bge-m3")
    assert proc.stderr.strip() == f"warning: {BASE_WARNING} (BGE-M3 has one size, 568M parameters)"
    assert json.loads(proc.stdout)["warnings"] == [BASE_WARNING + " (BGE-M3 has one size, 568M parameters)"]


def test_validate_stops_waiting_at_the_load_timeout_and_says_so(bge_m3_folder):
    with Server([bge_m3_folder], env=LAZY) as server:
        proc = run_validate(server.url, "--load-timeout", "0")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    checks = checks_of(proc)
    assert list(checks) == ["reachable", "models/status", "model", "dimension"]  # no model, nothing measured
    assert checks["models/status"] == {
        "name": "models/status", "passed": False, "expected": "parses, embedding_loaded true",
        "value": "BAAI/bge-m3 not loaded after 0 s (wait longer with --load-timeout)"}


def test_a_model_that_fails_to_load_on_first_use_is_reported_without_waiting_out_the_bound(bge_m3_folder, tmp_path):
    broken = tmp_path / "bge-m3-int8"
    shutil.copytree(bge_m3_folder, broken)
    (broken / "openvino_model.bin").write_bytes(b"truncated")
    with Server([broken], env=LAZY) as server:
        proc = run_validate(server.url, "--load-timeout", "600")
    assert proc.returncode == 1
    value = checks_of(proc)["models/status"]["value"]
    assert value.startswith("BAAI/bge-m3 failed to load: ") and "openvino_model.bin" in value


def test_bge_m3_base_names_the_served_bge_m3_once_warned_and_unknown_routes_are_not_found(bge_m3_folder, tmp_path):
    log = tmp_path / "server.log"
    with Server([bge_m3_folder], env={**LAZY, "OVEMBED_DEFAULT_MODEL": "bge-m3-base"}, log=log) as server:
        answers = [httpx.post(server.url + "/embeddings", json={"texts": ["x"], "model": name}, timeout=60)
                   for name in ("BAAI/bge-m3-base", "BAAI/bge-m3-base", "bge-m3-base", "BAAI/bge-m3")]
        openai = httpx.post(server.url + "/v1/embeddings", json={"input": "x", "model": "BAAI/bge-m3-base"})
        unknown_model = httpx.post(server.url + "/embeddings", json={"texts": ["x"], "model": "BAAI/bge-m4"})
        unknown_route = httpx.get(server.url + "/embedding")
        unknown_v1 = httpx.post(server.url + "/v1/embedding", json={"input": "x"})
        with Client(server.url + "/ovembed", retries=0) as client, pytest.raises(OvembedError) as info:
            client.status()  # a URL with a path the service does not have (a proxy's prefix, say)
    assert [r.status_code for r in answers] == [200] * 4 and openai.status_code == 200
    assert {r.json()["model"] for r in answers} == {"BAAI/bge-m3"} and len(openai.json()["data"]) == 1
    warnings = [json.loads(line) for line in log.read_text().splitlines() if "does not exist; using" in line]
    assert [w["model"] for w in warnings] == ["bge-m3-base", "BAAI/bge-m3-base"]  # the default, then once per name
    assert unknown_model.status_code == 404 and unknown_model.json()["error"] == "model_not_found"
    assert "model 'BAAI/bge-m4' is not served here" in unknown_model.json()["detail"]
    assert unknown_route.status_code == 404
    assert unknown_route.json() == {"error": "not_found",
                                    "detail": "no route GET /embedding (the API: /docs, /openapi.json)"}
    assert unknown_v1.status_code == 404 and unknown_v1.json()["error"]["code"] == "not_found"
    assert unknown_v1.json()["error"]["type"] == "invalid_request_error"
    assert info.value.kind is ErrorKind.NOT_FOUND and "no route GET /ovembed/models/status" in str(info.value)
