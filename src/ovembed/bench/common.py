"""What the measuring tools share: the machine they ran on, memory readers, timing loops, Markdown tables, the
hidden child-process runner, and `ovembed serve` on a free loopback port (the soak's and the tests' server)."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from ovembed.workload import percentiles

# --- the machine and the memory of a process ---------------------------------------------------------


def cores() -> int:
    """CPUs this process may use (the container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def int8_dot_products() -> bool:
    """Whether this CPU has int8 dot-product units (AVX-512 VNNI, AVX-VNNI or AMX). Without them, oneDNN's int8
    kernels sum through saturating 16-bit intermediates (AVX2 `vpmaddubsw`): the same int8 model gives other,
    noisier numbers (docs/quality.md#2-what-int8-costs-all-23-shared-sets)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                 set())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f" {f}" in flags]
    return {"cpu": cpu, "cores": cores(), "isa": isa, "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version()}


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon (memory the process itself holds; the rest of RSS is mostly memory-mapped model files,
    clean pages the kernel can drop) and VmHWM (high-water RSS: unlike ru_maxrss not inherited across exec) of
    a process, in MB; empty if it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def anon_mb() -> float:
    return proc_status().get("RssAnon") or rss_mb()


def peak_mb() -> float:
    return proc_status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def server_pss_mb(pid: int) -> float:
    """PSS of a server and its children: shared buffers are split between processes, not counted N times."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


# --- timing and reporting ----------------------------------------------------------------------------


def time_runs(run: Callable[[int], object], seconds: float, min_runs: int, max_runs: int) -> list[float]:
    """Milliseconds of run(i) for i = 0, 1, …: at least min_runs, then until `seconds` or max_runs."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        t0 = time.perf_counter()
        run(len(times))
        times.append((time.perf_counter() - t0) * 1000)
    return times


def run_clients(client: Callable[[int], None], n: int, start_line: threading.Barrier) -> float:
    """Run client(0..n-1) in threads that all pass `start_line` together; seconds from that line to the last."""
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def percentiles_ms(times_ms: list[float]) -> dict[str, float | None]:
    """{"p50_ms", "p95_ms", "p99_ms"}; None each when nothing was timed."""
    if not times_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"{k}_ms": v for k, v in percentiles(times_ms).items()}


def markdown(head: list[str], rows: list[list[object]]) -> str:
    """A Markdown table, as pasted into docs/; a short row (an error) simply has fewer cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def progress(tag: str) -> Callable[[str], None]:
    """A `say(message)` that prints `[tag] message` on stderr, apart from the report on stdout."""
    return lambda message: print(f"[{tag}] {message}", file=sys.stderr, flush=True)


# --- the hidden child process ------------------------------------------------------------------------


def run_child(worker: str, plan: dict, show_progress: bool = False) -> dict:
    """`worker` ("module:function", taking the plan and returning figures) in a fresh interpreter, so that the
    memory and cores it measures are its own (see `ovembed.bench.child`). Returns its figures or {"error": …}:
    its last stderr line, or with `show_progress` (stderr passes through, for progress lines) its exit code."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="ovembed-bench-plan-") as f:
        json.dump(plan, f)
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "ovembed.bench.child", worker, f.name], stdout=subprocess.PIPE,
                              stderr=None if show_progress else subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    if show_progress:
        return {"error": f"exit {proc.returncode} (see the messages above)"}
    tail = proc.stderr.strip().splitlines()
    return {"error": tail[-1] if tail else f"exit {proc.returncode}"}


# --- a local server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`ovembed serve` for model folders on a free loopback port, its output in `log` (or nowhere); settings
    come from `env` only, never from this process's OVEMBED_* variables. A context manager."""

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
                                     stdout=self._log, stderr=subprocess.STDOUT)
        if wait_ready:
            try:
                self.wait(lambda r: r.status_code == 200)
            except BaseException:
                self.stop()
                raise

    def wait(self, ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
             timeout: float = 60.0) -> httpx.Response:
        """The first /health answer `ready` accepts; RuntimeError if the server exits, TimeoutError if none does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ovembed serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                response = httpx.get(self.url + "/health", timeout=2)
                if ready(response):
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"ovembed serve was not ready within {timeout:g} s: {self.tail()}")

    def tail(self) -> str:
        """The log's last line, for an error message."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines() if self.log_path else []
        except OSError:
            return ""
        return lines[-1][:300] if lines else "(no output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

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

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_model_server(model: Path, env: dict, log: Path | None, who: str, timeout: float, say) -> LocalServer:
    """`ovembed serve` for a model folder on a free loopback port, ready (what soak and mixed start with --model);
    a folder that is not a model, or a server that never gets ready, is a clear error."""
    from ovembed.errors import validation

    if not (Path(model) / "ovembed.json").is_file():
        raise validation(f"{model} is not a model folder (no ovembed.json); make one with `ovembed quantize`")
    if log is None:
        fd, name = tempfile.mkstemp(prefix=f"ovembed-{who}-", suffix=".log")
        os.close(fd)
        log = Path(name)
    say(f"starting ovembed serve for {model} (log: {log})")
    server = LocalServer([Path(model)], {k: str(v) for k, v in env.items() if v is not None}, wait_ready=False, log=log)
    try:
        server.wait(timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        server.stop(60)
        raise validation(str(exc)) from None
    return server
