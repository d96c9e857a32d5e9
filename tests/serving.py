"""Start a real `ovembed serve` process on a free loopback port, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ovembed.evaluate.soak import free_port


class Server:
    def __init__(self, models: list[Path], env: dict[str, str] | None = None, wait_ready: bool = True,
                 log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OVEMBED_", "OPENVINO_PRELOAD"))}
        full_env.update({"OVEMBED_MODELS": ",".join(str(m) for m in models), "OVEMBED_PORT": str(self.port),
                         "OVEMBED_HOST": "127.0.0.1", **(env or {})})
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "ovembed.cli", "serve"], env=full_env,
                                     stdout=self._log, stderr=self._log)
        if wait_ready:
            self.wait(lambda r: r.status_code == 200)

    def wait(self, ready, timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                response = httpx.get(self.url + "/health", timeout=2)
                if ready(response):
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
