"""OpenVINO execution: the compiled model, its infer requests in flight, and the token table."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import openvino as ov

from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import TOKEN_TABLE, TOKEN_TABLE_SCALES

log = logging.getLogger("ovembed.engine")


class TokenTable:
    """The vocabulary embedding table, memory-mapped: only rows that are looked up are paged in.

    Keeping this 250k x 1024 lookup out of the graph is what keeps a static-INT8 BGE-M3 small in
    memory: inside the graph the CPU plugin holds it unpacked in float (figures:
    docs/benchmarks.md#what-the-figures-say)."""

    def __init__(self, folder: Path):
        try:
            self.rows = np.load(Path(folder) / TOKEN_TABLE, mmap_mode="r")
            scales = Path(folder) / TOKEN_TABLE_SCALES
            self.scales = np.load(scales, mmap_mode="r") if scales.is_file() else None
        except (OSError, ValueError) as exc:
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder}: cannot read the token table: {exc}") from None
        if self.rows.dtype == np.int8 and self.scales is None:
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder}: int8 token table without {TOKEN_TABLE_SCALES}")

    @property
    def vocab_size(self) -> int:
        return self.rows.shape[0]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        flat = ids.reshape(-1)
        rows = self.rows[flat].astype(np.float32)
        if self.scales is not None:
            rows *= self.scales[flat][:, None]
        return rows.reshape(*ids.shape, rows.shape[-1])


SHAPE_CACHE = 128  # input shapes whose prepared kernels the CPU plugin keeps (OVEMBED_SHAPE_CACHE)
KERNEL_CACHE = 256  # oneDNN primitives (JIT kernels) kept per process (OVEMBED_KERNEL_CACHE)
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
_kernel_cache_in_force: int | None = None


def limit_kernel_cache(capacity: int = KERNEL_CACHE) -> int:
    """Cap oneDNN's primitive cache, which OpenVINO's CPU plugin fills beside its own shape cache: one entry
    per layer kernel and input shape, 1024 by default. Under mixed lengths that default is what kept a
    server's RSS growing after warm-up (figures: docs/reliability.md#the-kernel-cache). It is process-wide
    and oneDNN reads it once, at its first kernel: so it is set before the first model compiles, the first
    caller's value holds, and an explicit ONEDNN_PRIMITIVE_CACHE_CAPACITY in the environment wins.
    Returns the capacity in force."""
    global _kernel_cache_in_force
    if _kernel_cache_in_force is None:
        user = os.environ.get(ONEDNN_CACHE_ENV)
        if user is not None and user.strip().isdigit():
            _kernel_cache_in_force = int(user)
        else:
            os.environ[ONEDNN_CACHE_ENV] = str(capacity)
            _kernel_cache_in_force = capacity
    elif capacity != _kernel_cache_in_force:
        log.warning("kernel cache stays at %d: it is per process and fixed by the first model loaded (asked: %d)",
                    _kernel_cache_in_force, capacity)
    return _kernel_cache_in_force


class Runtime:
    """A compiled OpenVINO model with several infer requests, so batches overlap with the Python
    work around them (padding, lookups, post-processing) and all cores stay busy."""

    def __init__(
        self,
        source: Path | ov.Model,
        performance_hint: str = "LATENCY",
        infer_requests: int | None = None,
        inference_precision: str | None = None,
        threads: int | None = None,
        shape_cache: int = SHAPE_CACHE,
        kernel_cache: int = KERNEL_CACHE,
    ):
        limit_kernel_cache(kernel_cache)
        core = ov.Core()
        # The CPU plugin keeps prepared kernels per input shape (batch x length), 5000 by default. Under mixed
        # lengths nearly every call is a new shape and that cache grew a server's RSS without bound in practice;
        # capped, RSS stays flat (figures: docs/reliability.md#the-first-leak-found-by-the-soak-openvinos-per-shape-cache).
        config: dict[str, object] = {"PERFORMANCE_HINT": performance_hint, "CPU_RUNTIME_CACHE_CAPACITY": shape_cache}
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(source if isinstance(source, ov.Model) else str(source), "CPU", config)
        except RuntimeError as exc:
            raise OvembedError(ErrorKind.MODEL_INVALID, f"cannot load {source}: {exc}") from None
        self.output_names = [out.get_any_name() for out in self.compiled.outputs]
        n = infer_requests or max(2, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue = ov.AsyncInferQueue(self.compiled, n)
        self._lock = threading.Lock()  # one caller drives the queue at a time
        self.held_tokens = 0  # largest batch (padded tokens) since the buffers were last released

    @property
    def infer_requests(self) -> int:
        return len(self._queue)

    def run(self, feeds: Iterable[dict[str, np.ndarray]], wanted: list[str]) -> list[dict[str, np.ndarray]]:
        """Run every feed; results in feed order, each with copies of the `wanted` outputs."""
        results: list[dict[str, np.ndarray] | None] = []
        errors: list[BaseException] = []

        def done(request: ov.InferRequest, index: int) -> None:
            try:
                results[index] = {name: request.get_tensor(name).data.copy() for name in wanted}
            except BaseException as exc:  # surfaced after wait_all, never lost in the callback thread
                errors.append(exc)

        with self._lock:
            self._queue.set_callback(done)
            try:
                for index, feed in enumerate(feeds):
                    self.held_tokens = max(self.held_tokens, feed["attention_mask"].size)
                    results.append(None)
                    self._queue.start_async(feed, index)  # blocks while every request is busy
                self._queue.wait_all()
            except BaseException as exc:
                self._reset()
                if isinstance(exc, RuntimeError):
                    raise OvembedError(ErrorKind.BACKEND, f"inference failed: {openvino_reason(exc)}") from None
                raise
            if errors:
                self._reset()
                raise OvembedError(ErrorKind.BACKEND, f"inference failed: {openvino_reason(errors[0])}")
        return results  # type: ignore[return-value]

    def release(self) -> None:
        """Give back the intermediate buffers OpenVINO keeps sized for the largest call so far (a 32 x 512 batch of
        MiniLM int8 grows RSS by ~0.4 GB, of which this gives back ~0.25 GB; the rest is the kernels prepared for
        that shape, kept by the capped caches). The next call allocates what it needs again."""
        with self._lock:
            self.compiled.release_memory()
            self.held_tokens = 0
        _malloc_trim()

    def _reset(self) -> None:
        """Replace the infer requests after a failure. A request whose inference failed keeps its exception
        (every later wait rethrows it) and AsyncInferQueue never hands it out again: left in place, one bad
        input would make every later call fail with 'Infer Request is busy'. The compiled model is kept."""
        for index in range(len(self._queue)):
            try:
                self._queue[index].wait()  # let the others finish before their queue goes
            except RuntimeError:
                pass
        self._queue = ov.AsyncInferQueue(self.compiled, len(self._queue))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library of this process (glibc on Linux), or None where it cannot be opened so."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None


def _malloc_trim() -> None:
    """Hand freed heap pages back to the system (glibc keeps them for reuse otherwise); elsewhere a no-op."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def read_model(xml_path: Path) -> ov.Model:
    """The IR, its weights memory-mapped (what every runtime of one model compiles from)."""
    try:
        return ov.Core().read_model(str(xml_path))
    except RuntimeError as exc:
        raise OvembedError(ErrorKind.MODEL_INVALID, f"cannot load {xml_path}: {exc}") from None


MADV_DONTNEED = 4


def drop_mapped_weights(weights: Path) -> int:
    """Drop this process's resident pages of the memory-mapped IR weights file; returns the bytes mapped.

    OpenVINO maps the .bin read-only and copies each weight into its own kernel layout while it prepares the
    graph; after that the mapped original is not read again, yet its pages stay counted in RSS (~300 MB for
    BGE-M3 int8). MADV_DONTNEED on a read-only file mapping only forgets the pages: anything that reads
    them later gets them back from the file, unchanged. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return 0
    madvise = getattr(_libc(), "madvise", None)
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    target = str(Path(weights).resolve())
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return 0
    dropped = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "w" in fields[1]:
            continue  # never a writable mapping: there DONTNEED would discard data
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
    return dropped


def openvino_reason(exc: BaseException) -> str:
    """OpenVINO's message without its C++ source locations ("Exception from src/...cpp:246:") and blank lines."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith("Exception from ")]
    return " ".join(kept) or type(exc).__name__
