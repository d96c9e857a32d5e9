"""Embedder: what makes one space's vectors, either a model folder loaded in-process or a model on a running
service; the RAG client, `reembed`, its Ray workers and `ovembed eval` all take one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.store import Chunk, Space, VectorRow


class Embedder(ABC):
    """What makes one space's vectors: an in-process model folder or a running service."""

    space: Space
    max_tokens: int  # per chunk, special tokens excluded
    outputs: list[str]  # what the model can give: dense, and for BGE-M3 sparse and colbert

    @abstractmethod
    def embed(self, texts: list[str], sparse: bool) -> tuple[np.ndarray, list[SparseVector] | None]: ...

    @abstractmethod
    def offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]: ...

    @abstractmethod
    def colbert(self, texts: list[str]) -> list[np.ndarray]: ...

    def encode(self, texts: list[str], dense: bool = True, sparse: bool = False, colbert: bool = False
               ) -> tuple[np.ndarray | None, list[SparseVector] | None, list[np.ndarray] | None]:
        """Several outputs for the same texts (what is not asked for is None)."""
        d, s = self.embed(texts, sparse) if dense or sparse else (None, None)
        return d if dense else None, s, self.colbert(texts) if colbert else None

    def vectors(self, chunks: list[Chunk]) -> list[VectorRow]:
        dense, sparse = self.embed([c.text for c in chunks], sparse=self.space.sparse)
        return [VectorRow(c.id, dense[i], sparse[i] if sparse else None) for i, c in enumerate(chunks)]


class LocalEmbedder(Embedder):
    def __init__(self, folder: str | Path, threads: int | None = None):
        """threads: OpenVINO's inference threads (default: all cores)."""
        from ovembed.engine import load_model

        self.model = load_model(folder, threads=threads)
        m = self.model.manifest
        name = Path(folder).name
        self.space = Space(name, m.model_id(name), m.precision, m.dimension, str(Path(folder).resolve()),
                           sparse="sparse" in m.outputs, fingerprint=m.fingerprint)
        self.max_tokens = m.max_length - 2
        self.outputs = list(self.model.outputs)

    def embed(self, texts, sparse):
        out = self.model.embed(texts, dense=True, sparse=sparse)
        return out.dense, out.sparse

    def encode(self, texts, dense=True, sparse=False, colbert=False):
        out = self.model.embed(texts, dense=dense, sparse=sparse, colbert=colbert)  # one pass for all three
        return out.dense if dense else None, out.sparse if sparse else None, out.colbert if colbert else None

    def offsets(self, texts):
        return self.model.tokenizer.offsets(texts)

    def colbert(self, texts):
        if "colbert" not in self.model.outputs:
            raise validation(f"{self.space.name} has no ColBERT output to rerank with")
        return self.model.embed(texts, dense=False, colbert=True).colbert


class ServiceEmbedder(Embedder):
    """A model on a running service: the one named `model` (its name, hub id or alias), else the one that makes
    `space` (matched by fingerprint, never blindly the default), else the service's default model."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, space: Space | None = None):
        from ovembed.client import Client

        self.client = Client(url, api_key=api_key)
        served = self.client.status()
        info = _served_model(url, served, model, space)
        self.model = info["name"]
        self.outputs = info["outputs"]
        self.space = served_space(info, url)
        self.max_tokens = info["max_length"] - 2

    def embed(self, texts, sparse):
        dense, sparse_out, _ = self.client.embed(texts, sparse=sparse, model=self.model)
        return dense, sparse_out

    def offsets(self, texts):
        return [[tuple(o) for o in row] for row in self.client.tokenize(texts, self.model, offsets=True)["offsets"]]

    def colbert(self, texts):
        if "colbert" not in self.outputs:
            raise validation(f"{self.space.name} has no ColBERT output to rerank with")
        return self.client.colbert(texts, self.model)


def served_space(info: dict, url: str = "") -> Space:
    """The space a served model (an entry of /models/status's models[]) fills."""
    return Space(info["name"], info["id"], info["precision"], info["dimension"], url,
                 sparse="sparse" in info["outputs"], fingerprint=info.get("fingerprint") or "")


def serving(status: dict, space: Space) -> dict | None:
    """The served model that makes `space`'s vectors (the same fingerprint first), or None."""
    matching = [m for m in status["models"] if m["dimension"] is not None and space.same_model(served_space(m))]
    exact = [m for m in matching if space.fingerprint and m.get("fingerprint") == space.fingerprint]
    return (exact or matching or [None])[0]


def _served_model(url: str, status: dict, model: str | None, space: Space | None) -> dict:
    models = status["models"]
    names = ", ".join(m["name"] for m in models)
    if model:
        from ovembed.manifest import resolve_alias

        wanted = {model, resolve_alias(model)[0]}  # BAAI/bge-m3-base: BAAI/bge-m3, as the server takes it
        info = next((m for m in models if wanted & {m["name"], m["id"], *m["aliases"]}), None)
        if info is None:
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"{url} does not serve '{model}' (it serves: {names})")
        return info
    if space is None:
        from ovembed.client import default_model

        return default_model(status) or models[0]
    info = serving(status, space)
    if info is None:
        raise OvembedError(ErrorKind.MODEL_NOT_FOUND,
                           f"{url} serves no model that makes space '{space.name}' ({space.describe()}); it serves: "
                           f"{names}. Serve that model there, or name a served one with --model NAME (and a new "
                           "space with --space, or `ovembed reembed` to move the store to it)")
    return info


def make_embedder(model: str | None = None, url: str | None = None, api_key: str | None = None,
                  space: Space | None = None) -> Embedder:
    """How the RAG commands reach a model. `--url` with `--model NAME`: that served model; `--url` alone: the
    served model that makes `space` (the store's active one); `--model DIR` alone: a folder in-process; neither:
    where `space` was made from (its recorded folder or service), when that is reachable."""
    if url:
        return ServiceEmbedder(url, api_key, model=model, space=None if model else space)
    if model:
        return LocalEmbedder(model)
    if space is None:
        raise validation("give --model DIR (a model folder, in-process) or --url URL (a running service); the store "
                         "has no space yet to take the model from")
    return _recorded(space, api_key)


def _recorded(space: Space, api_key: str | None) -> Embedder:
    """The model at the space's recorded source, checked to make that space."""
    ref = space.model_ref
    hint = (f"pass --model DIR (a folder of {space.model_id}) or --url URL (a service serving it) to say where "
            f"space '{space.name}''s model is")
    if ref.startswith(("http://", "https://")):
        try:
            return ServiceEmbedder(ref, api_key, space=space)
        except OvembedError as exc:
            raise validation(f"space '{space.name}' was filled through {ref}, which is not usable now ({exc}); "
                             + hint) from None
    if not ref or not (Path(ref) / "ovembed.json").is_file():
        raise validation(f"space '{space.name}' was filled from {ref or 'an unrecorded source'}, which is not "
                         "here; " + hint)
    embedder = LocalEmbedder(ref)
    if not space.same_model(embedder.space):
        raise validation(f"{ref} now holds another model ({embedder.space.describe()}) than space "
                         f"'{space.name}' ({space.describe()}); " + hint)
    return embedder


def embedder_for(target: str, api_key: str | None = None, url: str | None = None) -> Embedder:
    """A model folder or a service URL, as `reembed --to`, `eval --model` and the Ray workers take them; with
    `url`, target names a model that service serves."""
    if target.startswith(("http://", "https://")):
        return ServiceEmbedder(target, api_key)
    if url:
        return ServiceEmbedder(url, api_key, model=target)
    return LocalEmbedder(target)
