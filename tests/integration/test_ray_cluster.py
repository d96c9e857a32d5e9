"""`reembed --engine ray` on a real Ray cluster: a head and a worker node, each its own `ray start` process tree
with one CPU, sharing a real PostgreSQL; the worker node keeps its model folders somewhere else."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cli_runner import run_cli
from ovembed.embedders import LocalEmbedder
from ovembed.rag import RAG, read_documents
from ovembed.reembed import reembed
from ovembed.reembed.job import job_name
from ovembed.reembed.ray_backend import reembed_ray
from ovembed.store import open_store

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starting the cluster alone takes ~20 s on two busy cores

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 60


class RayNode:
    """One `ray start --block` in its own session: stopping it (SIGTERM) stops its raylet and workers, and every
    process it started is found again by that session id."""

    def __init__(self, temp_dir: Path, args: list[str], env: dict[str, str]):
        self.log = temp_dir / "ray-start.log"
        # --temp-dir per node: each raylet's sockets and logs apart, and apart from any other Ray on this machine
        # (whose /tmp/ray and fixed ports this cluster must not touch).
        self.process = subprocess.Popen(
            [str(RAY), "start", "--block", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={_free_port()}", *args],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in self.log.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def leftovers(self) -> list[int]:
        """Processes still in this node's session."""
        return [pid for pid in _pids() if _session(pid) == self.process.pid]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[4])  # fields after the command: state ppid pgrp session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tiny_m3_fp32, minilm_int8):
    """The cluster's address. The worker node's OVEMBED_MODELS_DIR holds a copy of the tiny model under another
    name, and, named minilm-int8, another model (the tiny one): a folder whose name says one model and whose files
    are another's."""
    root = Path(tempfile.mkdtemp(prefix="ovray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    node_models = root / "node-models"
    shutil.copytree(tiny_m3_fp32, node_models / "tiny-copy")
    (node_models / minilm_int8.name).symlink_to(tiny_m3_fp32, target_is_directory=True)
    port = _free_port()
    # Auth mode stated: a head finding ~/.ray/auth_token (any local ray.init writes one) turns token auth on by
    # itself, a joining node does not (Ray 2.60) and is refused. Off, drivers with or without a token get in.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OVEMBED_MODELS_DIR")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # a stopped node waits 30 s for its work to drain otherwise
    (root / "head").mkdir()
    (root / "worker").mkdir()
    head = RayNode(root / "head", ["--head", f"--port={port}", "--include-dashboard=false"], env)
    nodes = [head]
    try:
        head.wait_started()
        worker = RayNode(root / "worker", [f"--address=127.0.0.1:{port}"],
                         {**env, "OVEMBED_MODELS_DIR": str(node_models)})
        nodes.append(worker)
        worker.wait_started()
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            node.stop()
        deadline = time.monotonic() + 30
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):  # what is left is killed below
                node.process.wait(max(0.0, deadline - time.monotonic()))
        deadline = time.monotonic() + 10  # workers exit shortly after their raylet
        while (left := [pid for node in nodes for pid in node.leftovers()]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # never leave them running, then fail
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], f"processes of the Ray cluster outlived `ray start`: {left}"


def _ingest(db: str, model: Path, data: Path, docs: int) -> int:
    texts = read_documents(str(data / "xquad" / "de" / "corpus.jsonl"))[:docs]
    with open_store(db) as store:
        return RAG(store, LocalEmbedder(model)).ingest(texts)["chunks"]


def _dense(db: str, space: str) -> dict[int, np.ndarray]:
    with open_store(db) as store:
        return store.get_dense(space, [c.id for c in store.chunks_after(0, 100_000)])


def test_reembed_on_two_nodes_writes_the_local_jobs_vectors(ray_cluster, postgres_db, shared_data, tiny_m3_fp32,
                                                           monkeypatch):
    chunks = _ingest(postgres_db, tiny_m3_fp32, shared_data, docs=24)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)

    stats = reembed_ray(postgres_db, str(tiny_m3_fp32), batch=4, actors=2, space_name="tiny-ray", progress=False)
    local = reembed(postgres_db, LocalEmbedder(tiny_m3_fp32), batch=4, progress=False, space="tiny-local")

    assert (stats.written, local.written, stats.chunks) == (chunks, chunks, chunks)
    assert len(stats.nodes) == 2 and sum(stats.nodes.values()) == -(-chunks // 4), stats.nodes  # every range once
    on_ray, here = _dense(postgres_db, "tiny-ray"), _dense(postgres_db, "tiny-local")
    assert on_ray.keys() == here.keys() and len(on_ray) == chunks
    cosines = [float(on_ray[i] @ here[i] / np.linalg.norm(on_ray[i]) / np.linalg.norm(here[i])) for i in on_ray]
    assert min(cosines) >= 0.9999
    with open_store(postgres_db) as store:
        assert not store.has_pending("tiny-ray")
        assert store.get_checkpoint(job_name("tiny-ray")) == (max(on_ray), chunks)


def test_a_node_whose_folder_holds_another_model_refuses_plainly(ray_cluster, postgres_db, shared_data,
                                                                  tiny_m3_fp32, minilm_int8):
    _ingest(postgres_db, tiny_m3_fp32, shared_data, docs=12)

    result = run_cli("reembed", "--to", minilm_int8, "--engine", "ray", "--db", postgres_db, "--batch", 2,
                     "--actors", 2, "--json", env={"RAY_ADDRESS": ray_cluster})

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{minilm_int8.name} holds another model (fingerprint" in result.stderr, result.stderr
    assert "OVEMBED_MODELS_DIR" in result.stderr


def test_actors_that_find_no_room_fail_the_run_plainly(ray_cluster, postgres_db, shared_data, tiny_m3_fp32,
                                                       minilm_int8):
    _ingest(postgres_db, minilm_int8, shared_data, docs=4)

    result = run_cli("reembed", "--to", tiny_m3_fp32, "--engine", "ray", "--db", postgres_db, "--actors", 1,
                     "--actor-cpus", 64, "--actors-start-timeout", 3, "--json", env={"RAY_ADDRESS": ray_cluster})

    assert result.returncode == 1, result.stderr  # unavailable
    assert "Traceback" not in result.stderr
    assert "Ray did not start 1 actor(s) of 64 CPU(s) each within 3 s" in result.stderr, result.stderr
    assert "--actors-start-timeout" in result.stderr
