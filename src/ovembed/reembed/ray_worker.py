"""The Ray job's actor: one model and one store connection each; it finds the model on its own node by the space's
fingerprint, fetches and embeds one id range's texts at a time, and rides out a lost database connection."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import numpy as np

from ovembed.config import Settings
from ovembed.embedders import Embedder, LocalEmbedder, embedder_for
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import MANIFEST_NAME, Manifest
from ovembed.reembed.job import BACKOFF_MAX_S, BACKOFF_S, RETRIES, _TextCache, embed_page
from ovembed.store import Space, Store, open_store

RESULT_COLUMNS = ("seq", "lo", "hi", "written", "reused", "retries")


class EmbedWriter:
    """One Ray actor: embeds the pending chunks of id ranges and writes their vectors.

    `model` is a service URL (or, with `url`, a model that service serves), or a model folder's name, found under
    this node's models directory (`models_dir`: the driver's, unless this node sets OVEMBED_MODELS_DIR)."""

    def __init__(self, db: str, space: Space, model: str, models_dir: str | None = None, threads: int | None = None,
                 api_key: str | None = None, url: str | None = None):
        import ray  # only ever imported on a Ray worker, where Ray is installed

        self.db = db
        self.space = space
        self.node = ray.get_runtime_context().get_node_id()
        self.cache = _TextCache()
        self.store: Store | None = None  # opened by the first range, and again after a lost connection
        # Ray reports an error raised here to the driver as text only (ActorDiedError keeps no cause), so it
        # is kept and raised by the first call instead, where the driver receives the error itself.
        self.failed: OvembedError | None = None
        try:
            self.embedder = self._embedder(model, models_dir, threads, api_key, url)
        except OvembedError as exc:
            self.failed = exc

    def _embedder(self, model: str, models_dir: str | None, threads: int | None, api_key: str | None,
                  url: str | None) -> Embedder:
        if models_dir is None:
            embedder = embedder_for(model, api_key, url)
        else:
            embedder = LocalEmbedder(node_model_folder(model, node_models_dir(models_dir), self.space, self.node),
                                     threads=threads)
            if self.space.fingerprint:
                return embedder  # its files are the space's model's, whatever the folder is called on this node
        if not embedder.space.same_model(self.space):
            # A service that switched models mid-job would otherwise mix two models' vectors in one space.
            raise OvembedError(ErrorKind.VALIDATION, f"this worker's model makes space {embedder.space}, "
                                                     f"but the job fills {self.space}")
        return embedder

    def __call__(self, ranges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.failed is not None:
            raise self.failed
        results: dict[str, list[int]] = {column: [] for column in RESULT_COLUMNS}
        for seq, lo, hi, n in zip(ranges["seq"], ranges["lo"], ranges["hi"], ranges["n"], strict=True):
            written, reused, retries = self._embed_range_retrying(int(lo), int(hi), int(n))
            for column, value in zip(RESULT_COLUMNS, (seq, lo, hi, written, reused, retries), strict=True):
                results[column].append(int(value))
        return {**{column: np.asarray(values, np.int64) for column, values in results.items()},
                "node": np.asarray([self.node] * len(results["seq"]))}

    def _embed_range_retrying(self, lo: int, hi: int, n: int) -> tuple[int, int, int]:
        """(written, reused, retries) for one range. A lost connection (a `transient` error from any store call)
        reopens the store and does the range again: what was written is no longer pending, and upserts are
        idempotent. Waits 0.5, 1, 2, ... (at most 15) s between attempts, RETRIES times at most."""
        attempt = 0
        while True:
            try:
                if self.store is None:
                    self.store = open_store(self.db, create=False)
                return (*self._embed_range(self.store, lo, hi, n), attempt)
            except OvembedError as exc:
                if not getattr(exc, "transient", False):
                    raise
                self._drop_store()
                if attempt >= RETRIES:
                    raise OvembedError(exc.kind, f"{exc}; chunks {lo}..{hi}: gave up after {RETRIES} retries. "
                                       "Nothing is lost: run the same command again to resume") from None
                time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** attempt))
                attempt += 1

    def _embed_range(self, store: Store, lo: int, hi: int, n: int) -> tuple[int, int]:
        # At most n chunks of the range are pending: any past hi are another range's to do.
        chunks = [c for c in store.pending_chunks(self.space.name, lo - 1, n) if c.id <= hi]
        rows, reused = embed_page(self.embedder, chunks, self.cache) if chunks else ([], 0)
        return (store.put_vectors(self.space.name, rows) if rows else 0), reused

    def _drop_store(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            # Closing a broken connection (or a pool of them) may fail as well; it is being replaced either way.
            with contextlib.suppress(Exception):
                store.close()

    def __del__(self):
        self._drop_store()


def node_models_dir(driver_models_dir: str) -> str:
    """Where this node keeps model folders: its OVEMBED_MODELS_DIR (the service's setting) when set, else the
    driver's directory, for nodes that mount the models where the driver does."""
    settings = Settings()
    return settings.models_dir if "models_dir" in settings.model_fields_set else driver_models_dir


def node_model_folder(name: str, models_dir: str, space: Space, node: str) -> Path:
    """The folder under `models_dir` that makes `space`'s vectors: the one called `name` if its fingerprint is the
    space's, else any folder there with that fingerprint. Nodes may name and mount their copies differently;
    the fingerprint (the files' checksums) is what must match."""
    root = Path(models_dir).expanduser()
    named = root / name
    if not space.fingerprint:  # a space from before fingerprints: its folder's name is all there is to go by
        return named
    found = _fingerprint(named)
    if found == space.fingerprint:
        return named
    for manifest in sorted(root.glob(f"[!.]*/{MANIFEST_NAME}")):
        if _fingerprint(manifest.parent) == space.fingerprint:
            return manifest.parent
    there = f"{named} holds another model (fingerprint {found})" if found else f"there is no model folder {named}"
    raise OvembedError(ErrorKind.MODEL_NOT_FOUND,
                       f"Ray node {socket.gethostname()} ({node[:12]}): no model folder under {root} makes space "
                       f"'{space.name}' ({space.describe()}): {there}. Copy that model's folder there, or set "
                       "OVEMBED_MODELS_DIR on that node (before `ray start`) to the directory holding it")


def _fingerprint(folder: Path) -> str | None:
    try:
        return Manifest.read(folder).fingerprint
    except OvembedError:
        return None
