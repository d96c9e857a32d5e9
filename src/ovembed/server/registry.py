"""The models a service runs: where each lives, its names, its state, its engine and batcher."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ovembed.config import Settings
from ovembed.engine import EmbeddingModel, TokenBudget
from ovembed.engine.batcher import TokenBudgetBatcher
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import Manifest, find_folder, resolve_alias
from ovembed.server.metrics import Metrics

log = logging.getLogger("ovembed.server")


@dataclass
class ModelEntry:
    spec: str  # what the user configured: a folder or a hub id
    folder: Path | None
    manifest: Manifest | None
    name: str
    aliases: list[str]
    state: str = "not_loaded"  # not_loaded | loading | ready | error
    error: str | None = None
    model: EmbeddingModel | None = None
    batcher: TokenBudgetBatcher | None = None
    load_seconds: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_id(self) -> str:
        """The id responses report: the hub id when known, else the folder name."""
        return self.manifest.model_id(self.name) if self.manifest else self.name

    @property
    def fingerprint(self) -> str | None:
        """The model files' checksums (Manifest.fingerprint): the same model reached another way matches."""
        return self.manifest.fingerprint if self.manifest else None


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.entries: list[ModelEntry] = [self._entry(spec) for spec in settings.models]
        if not self.entries:
            raise OvembedError(ErrorKind.VALIDATION, "no models configured (--model or OVEMBED_MODELS)")
        self._by_name: dict[str, ModelEntry] = {}
        self._warned: set[str] = set()  # alias names already warned about in the log
        for entry in self.entries:
            for alias in [entry.name, *entry.aliases, entry.spec]:
                self._by_name.setdefault(alias, entry)
        wanted = settings.default_model
        default = (self._by_name.get(wanted) or self._by_alias(wanted)) if wanted else self.entries[0]
        if default is None:
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"default model '{wanted}' is not among the configured models")
        self.default = default

    def _entry(self, spec: str) -> ModelEntry:
        folder = find_folder(spec, Path(self.settings.models_dir))
        if folder is None:
            return ModelEntry(spec, None, None, spec, [], state="error",
                              error=f"model '{spec}' not found (no such folder, nor a model for it under "
                              f"{self.settings.models_dir}/; make one with `ovembed quantize`)")
        try:
            manifest = Manifest.read(folder)
        except OvembedError as exc:
            return ModelEntry(spec, folder, None, folder.name, [], state="error", error=str(exc))
        # Names a client may use; filesystem paths are not names (and are not shown to clients).
        aliases = [a for a in dict.fromkeys([manifest.source, manifest.name, spec])
                   if a and a != folder.name and not a.startswith(("/", ".", "~")) and a.count("/") <= 1]
        return ModelEntry(spec, folder, manifest, folder.name, aliases)

    def get(self, name: str | None) -> ModelEntry:
        if name is None:
            return self.default
        entry = self._by_name.get(name) or self._by_alias(name)
        if entry is None:
            known = ", ".join(sorted({n for e in self.entries for n in [e.name, *e.aliases]}))
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"model '{name}' is not served here (known: {known})")
        return entry

    def _by_alias(self, name: str) -> ModelEntry | None:
        """A name `ovembed quantize` also accepts for a model (`BAAI/bge-m3-base` for `BAAI/bge-m3`), with the
        warning quantize prints, logged once per name."""
        target, warning = resolve_alias(name)
        entry = self._by_name.get(target) if target != name else None
        if entry is not None and warning and name not in self._warned:
            self._warned.add(name)
            log.warning("model name %r: %s", name, warning, extra={"model": name, "served": entry.name})
        return entry

    def load(self, entry: ModelEntry) -> None:
        """Load (once) in the calling thread; concurrent callers wait for the same load."""
        with entry._lock:
            if entry.state in ("ready", "error"):
                return
            entry.state = "loading"
            started = time.perf_counter()
            # Nothing is attached to the entry until every part is built: a failed load leaves nothing that serves.
            try:
                model = EmbeddingModel(
                    entry.folder,
                    budget=TokenBudget(tokens=self.settings.batch_tokens, attention=self.settings.batch_tokens * 512),
                    performance_hint=self.settings.performance_hint,
                    infer_requests=self.settings.workers_infer,
                    verify_checksums=self.settings.verify_checksums,
                    shape_cache=self.settings.shape_cache,
                    kernel_cache=self.settings.kernel_cache,
                    lanes=self.settings.lanes if self.settings.short_request_tokens else 1,
                    threads=self.settings.threads,
                )
                batcher = TokenBudgetBatcher(
                    model,
                    max_wait_ms=self.settings.batch_wait_ms,
                    max_queue_texts=self.settings.max_queue_texts,
                    on_dispatch=self.metrics.dispatch_recorder(entry.name),
                    short_tokens=self.settings.short_request_tokens,
                    bulk_yield_ms=self.settings.bulk_yield_ms,
                    release_tokens=self.settings.release_tokens,
                )
            except Exception as exc:  # noqa: BLE001 - any failure marks this model failed; the others keep loading
                reason = str(exc) if isinstance(exc, OvembedError) else f"unexpected {type(exc).__name__}: {exc}"
                entry.state, entry.error = "error", reason
                log.error("model unavailable: %s: %s", entry.spec, reason, extra={"model": entry.spec, "error": reason})
                return
            entry.model, entry.batcher = model, batcher
            self.metrics.watch_queue(entry.name, entry.batcher)
            entry.load_seconds = round(time.perf_counter() - started, 3)
            self.metrics.load_seconds.labels(entry.name).set(entry.load_seconds)
            entry.state = "ready"

    def preload_in_background(self) -> threading.Thread:
        def run() -> None:
            for entry in self.entries:
                self.load(entry)

        for entry in self.entries:
            if entry.state == "not_loaded":
                entry.state = "loading"  # /health says "loading" from the first moment
        thread = threading.Thread(target=run, name="preload", daemon=True)
        thread.start()
        return thread

    async def ready(self, entry: ModelEntry) -> ModelEntry:
        """The entry, loaded; raises UNAVAILABLE while it cannot serve."""
        if entry.state != "ready" and entry.state != "error" and not self.settings.preload:
            await asyncio.to_thread(self.load, entry)
        if entry.state == "ready":
            return entry
        if entry.state == "error":
            raise OvembedError(ErrorKind.UNAVAILABLE, f"model '{entry.name}' failed to load: {entry.error}")
        raise OvembedError(ErrorKind.UNAVAILABLE, f"model '{entry.name}' is still loading; retry shortly")

    def close(self) -> None:
        for entry in self.entries:
            if entry.batcher is not None:
                entry.batcher.close()
