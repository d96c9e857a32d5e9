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
    def __init__(self, folder: str | Path):
        from ovembed.engine import load_model

        self.model = load_model(folder)
        m = self.model.manifest
        self.space = Space(Path(folder).name, _model_id(m.source, Path(folder).name), m.precision, m.dimension,
                           str(Path(folder).resolve()), sparse="sparse" in m.outputs)
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
    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        from ovembed.client import Client

        self.client = Client(url, api_key=api_key)
        status = self.client.status()
        wanted = model or status["embedding_model"]  # no model named: the service's default
        info = next((m for m in status["models"] if wanted in (m["name"], m["id"], *m["aliases"])), None)
        if info is None:
            raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"{url} does not serve '{model}'")
        self.model = info["name"]
        self.outputs = info["outputs"]
        self.space = Space(info["name"], info["id"], info["precision"], info["dimension"], url,
                           sparse="sparse" in info["outputs"])
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


def make_embedder(model: str | None = None, url: str | None = None, api_key: str | None = None) -> Embedder:
    if bool(model) == bool(url):
        raise validation("give exactly one of --model DIR (in-process) or --url URL (a running service)")
    return LocalEmbedder(model) if model else ServiceEmbedder(url, api_key)


def embedder_for(target: str, api_key: str | None = None) -> Embedder:
    """A model folder or a service URL, as `reembed --to`, `eval --model` and the Ray workers take them."""
    if target.startswith(("http://", "https://")):
        return ServiceEmbedder(target, api_key)
    return LocalEmbedder(target)


def _model_id(source: str, fallback: str) -> str:
    return source if source.count("/") == 1 and not source.startswith(("/", ".")) else fallback
