"""`make quantize` / `make serve` with the real Makefile and the real CLI: the folder is the one `ovembed quantize`
names for MODEL (from its id), another MODEL is a new quantize, and a MODEL that is neither a folder nor a hub id
stops make with quantize's message before anything is served.

make runs in an empty folder (models/ is made there) with VENV pointing at a folder that holds only a link to this
environment's `ovembed` and install stamps dated in the future: make never installs anything (and has no pip to)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ovembed.bench.common import free_port
from ovembed.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path) -> Path:
    work = tmp_path / "work"
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    work.mkdir()
    for name in ("pyproject.toml", "constraints.txt"):  # the stamps' prerequisites, as make sees them
        (work / name).symlink_to(ROOT / name)
    (bin_dir / "ovembed").symlink_to(Path(sys.executable).parent / "ovembed")
    future = time.time() + 10 * 365 * 86400  # newer than pyproject.toml even while someone edits it
    for stamp in ("bin/activate", ".torch-cpu", ".installed-serve", ".installed-dev"):
        (tmp_path / "venv" / stamp).touch()
        os.utime(tmp_path / "venv" / stamp, (future, future))
    return work


def _make(workdir: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), f"VENV={workdir.parent / 'venv'}", *args]
    if popen:
        return subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **popen)
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600)


def test_make_installs_nothing_here(workdir):
    assert _make(workdir, "-q", "install").returncode == 0  # -q: exit 0 when the target is up to date


@pytest.mark.parametrize("model", ["./bge-m3", "/no/such/folder/bge-m3", "bge-m3-large"])
def test_make_serve_stops_on_a_model_that_is_neither_a_folder_nor_a_hub_id(model, workdir, tiny_m3_fp32):
    # An older model where the old Makefile looked (models/<basename>-int8): it must not be served instead.
    shutil.copytree(tiny_m3_fp32, workdir / "models" / "bge-m3-int8")
    done = _make(workdir, "serve", f"MODEL={model}")
    assert done.returncode != 0
    assert f"ovembed quantize: error: '{model}' is neither a local folder nor a hub id like BAAI/bge-m3" in done.stderr
    assert "ovembed serve" not in done.stdout
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["bge-m3-int8"]


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


@pytest.mark.slow  # one conversion and a server start: ~30 s on 2 shared cores
def test_make_serve_quantizes_into_the_folder_named_from_the_id_then_serves_it(workdir, tiny_m3_source):
    source = workdir.parent / "downloads" / "m3"  # `hf download BAAI/bge-m3 --local-dir …` leaves such a folder
    shutil.copytree(tiny_m3_source, source)
    old = time.time() - 3600
    for path in source.rglob("*"):
        os.utime(path, (old, old))
    port = free_port()
    args = [f"MODEL={source}", "MODEL_ID=BAAI/bge-m3", "PRECISION=fp32", f"SERVE_ARGS=--port {port}"]
    make = _make(workdir, "serve", *args, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while _get(f"http://127.0.0.1:{port}/health") is None:
            assert make.poll() is None, make.stdout.read()
            assert time.monotonic() < deadline, "the service did not answer"
            time.sleep(1)
        served = _get(f"http://127.0.0.1:{port}/v1/models")
    finally:
        os.killpg(make.pid, signal.SIGTERM)  # the session make started: make and the service it exec'd
        output = make.communicate(timeout=60)[0]
    assert f"ovembed serve --model models/bge-m3-fp32 --port {port}" in output
    (model,) = served["data"]
    assert model["id"] == "BAAI/bge-m3" and "bge-m3-fp32" in model["aliases"]
    manifest = Manifest.read(workdir / "models" / "bge-m3-fp32")
    assert (manifest.source, manifest.source_folder, manifest.precision) == ("BAAI/bge-m3", str(source), "fp32")

    again = _make(workdir, "quantize", *args)
    assert again.returncode == 0, again.stderr
    assert f"models/bge-m3-fp32 is up to date (BAAI/bge-m3 from {source}, fp32): nothing to do" in again.stdout
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["bge-m3-fp32"]
