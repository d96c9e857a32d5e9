"""`ovembed serve` on a port another process holds: one line naming the port and `--port`, and its own exit code,
before any model is loaded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from ovembed.bench.common import free_port
from ovembed.cli.common import EXIT_CODES, EXIT_PORT_IN_USE
from ovembed.errors import ErrorKind


def test_a_taken_port_is_one_line_with_the_hint_and_its_own_exit_code(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVEMBED_", "OPENVINO_PRELOAD"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "ovembed.cli", "serve", "--model", str(tmp_path / "any-model"),
                               "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, env=env,
                              timeout=120)
        elapsed = time.monotonic() - started
    assert proc.returncode == EXIT_PORT_IN_USE == 4
    assert EXIT_CODES[ErrorKind.PORT_IN_USE] == EXIT_PORT_IN_USE
    assert EXIT_PORT_IN_USE not in {0, 1, 2, 3, 130}  # ok, check failed, usage, uvicorn's start-up failure, ^C
    assert proc.stderr.splitlines() == [
        f"ovembed serve: error: port {port} on 127.0.0.1 is already in use (another `ovembed serve`?); choose a free "
        "one with --port N (or OVEMBED_PORT)"]
    assert proc.stdout == "" and elapsed < 60


def test_the_port_from_ovembed_port_is_checked_the_same_way():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVEMBED_", "OPENVINO_PRELOAD"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "ovembed.cli", "serve"], capture_output=True, text=True,
                              env={**env, "OVEMBED_PORT": str(port), "OVEMBED_HOST": "127.0.0.1"}, timeout=120)
    assert proc.returncode == 4 and f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
