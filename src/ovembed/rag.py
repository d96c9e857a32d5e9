"""The RAG client: read documents, chunk them by tokens, embed, store; search dense | sparse | hybrid with
an optional ColBERT rerank; and fill missing vectors lazily when chunks are read."""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovembed.engine.outputs import SparseVector, colbert_score, combined_score
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.store import Chunk, ChunkInput, Space, Store, VectorRow

TEXT_SUFFIXES = (".txt", ".md")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)


# --- embedders ------------------------------------------------------------------------------------


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


# --- documents and chunks -------------------------------------------------------------------------


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def read_documents(path: str) -> list[Document]:
    """Documents from a .txt/.md file (one document), a .jsonl file (rows {"id"|"_id", "text", "title"?,
    "metadata"?}), a folder of those, or '-' (stdin as JSON lines). Everything is read and checked before
    anything is written, so a bad file leaves the store untouched."""
    if path == "-":
        return list(_jsonl(sys.stdin.read().splitlines(), "stdin"))
    root = Path(path).expanduser()
    if not root.exists():
        raise validation(f"{path}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in (*TEXT_SUFFIXES, ".jsonl")) if root.is_dir() else [root]
    docs: list[Document] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise validation(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise validation(f"{file}: cannot read ({exc.strerror})") from None
        if file.suffix == ".jsonl":
            docs.extend(_jsonl(text.splitlines(), str(file)))
        elif file.suffix in TEXT_SUFFIXES or not root.is_dir():
            doc_id = str(file.relative_to(root)) if root.is_dir() else file.name
            docs.append(Document(doc_id, text, {"path": str(file)}))
    if not docs:
        raise validation(f"{path}: no documents found (.txt, .md or .jsonl)")
    return docs


def _jsonl(lines: list[str], name: str) -> Iterator[Document]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise validation(f"{name}, line {number}: not JSON ({exc})") from None
        doc_id = row.get("id", row.get("_id")) if isinstance(row, dict) else None
        if doc_id is None or not isinstance(row.get("text"), str):
            raise validation(f'{name}, line {number}: needs "id" (or "_id") and a string "text"')
        metadata = dict(row.get("metadata") or {})
        if row.get("title"):
            metadata["title"] = row["title"]
        yield Document(str(doc_id), row["text"], metadata)


def chunk_spans(text: str, offsets: list[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[str]:
    """Windows of `chunk_tokens` tokens, `overlap` shared between neighbours, cut at token boundaries."""
    if not offsets:
        return [text.strip()] if text.strip() else []
    step = max(chunk_tokens - overlap, 1)
    chunks, start = [], 0
    while True:
        end = min(start + chunk_tokens, len(offsets))
        chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return chunks
        nxt = start + step
        # Start the next window at a word's first token, not inside a word split into sub-words.
        while nxt > start + 1 and offsets[nxt][0] > 0 and not text[offsets[nxt][0] - 1].isspace():
            nxt -= 1
        start = nxt


# --- the client -----------------------------------------------------------------------------------


@dataclass
class Result:
    chunk: Chunk
    score: float
    scores: dict[str, float]


class RAG:
    def __init__(self, store: Store, embedder: Embedder):
        self.store = store
        self.embedder = embedder

    def _active_is_mine(self) -> Space:
        active = self.store.active_space()
        mine = self.embedder.space
        if active is None:
            self.store.create_space(mine)
            return mine
        if (active.model_id, active.dimension) != (mine.model_id, mine.dimension):
            raise validation(f"the active space is '{active.name}' ({active.model_id}, {active.dimension} dims) but "
                             f"this model makes {mine.model_id} vectors; use the active space's model, or "
                             f"`ovembed spaces activate` another space")
        return active

    def ingest(self, docs: list[Document], chunk_tokens: int = 512, overlap: int = 64, batch: int = 64) -> dict:
        """Chunk, embed with the active space's model and store; re-ingesting an id replaces it."""
        if not 0 <= overlap < chunk_tokens:
            raise validation("--overlap must be at least 0 and smaller than --chunk-tokens")
        chunk_tokens = min(chunk_tokens, self.embedder.max_tokens)
        space = self._active_is_mine()
        stats = {"documents": 0, "chunks": 0, "empty": 0}
        for start in range(0, len(docs), batch):
            part = docs[start : start + batch]
            offsets = self.embedder.offsets([d.text for d in part])
            for doc, spans in zip(part, offsets, strict=True):
                texts = chunk_spans(doc.text, spans, chunk_tokens, overlap)
                if not texts:
                    stats["empty"] += 1
                    continue
                ids = self.store.upsert_document(doc.id, [ChunkInput(t, {"chunk": i}) for i, t in enumerate(texts)],
                                                 doc.metadata)
                # A crash between these two writes leaves chunks without vectors; search fills them (lazy).
                self.store.fill_missing(space.name, self.embedder.vectors, chunk_ids=ids)
                stats["documents"] += 1
                stats["chunks"] += len(ids)
        return stats

    def ensure_complete(self, space: Space, page: int = 256) -> int:
        """Embed every chunk of `space` that has no vector yet (the lazy path, in pages)."""
        if self.store.count_vectors(space.name) >= self.store.count_chunks():
            return 0  # the common case, without taking the space's lock
        written = 0
        while n := self.store.fill_missing(space.name, self.embedder.vectors, limit=page):
            written += n
        return written

    def read(self, chunk_ids: list[int], target: Space | None = None) -> list[Chunk]:
        """Chunks by id; ones with no vector in the target space (default: this embedder's) get one now."""
        target = target or self.embedder.space
        self.store.fill_missing(target.name, self.embedder.vectors, chunk_ids=chunk_ids)
        return self.store.get_chunks(chunk_ids)

    def search(self, query: str, k: int = 10, mode: str = "dense", rerank: bool = False,
               candidates: int = 50) -> list[Result]:
        if mode not in ("dense", "sparse", "hybrid"):
            raise validation("--mode must be dense, sparse or hybrid")
        space = self._active_is_mine()
        if mode != "dense" and not space.sparse:
            raise validation(f"space '{space.name}' has no lexical weights: use --mode dense")
        self.ensure_complete(space)  # search never silently skips a chunk
        depth = max(k, candidates) if (rerank or mode == "hybrid") else k
        dense, sparse = self.embedder.embed([query], sparse=mode != "dense")
        lists: dict[str, list] = {}
        if mode in ("dense", "hybrid"):
            lists["dense"] = self.store.search_dense(space.name, dense[0], depth)
        if mode in ("sparse", "hybrid"):
            lists["sparse"] = self.store.search_sparse(space.name, sparse[0], depth)
        if mode == "hybrid":
            fused: dict[int, float] = {}
            for hits in lists.values():
                for rank, hit in enumerate(hits):
                    fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            ranked = [(h.chunk_id, h.score) for h in lists[mode]]
        per_mode = {m: {h.chunk_id: h.score for h in hits} for m, hits in lists.items()}
        if rerank:
            ranked = self._colbert_rerank(query, [cid for cid, _ in ranked], per_mode)
        top = ranked[:k]
        chunks = {c.id: c for c in self.store.get_chunks([cid for cid, _ in top])}
        return [Result(chunks[cid], float(score), {m: s[cid] for m, s in per_mode.items() if cid in s})
                for cid, score in top if cid in chunks]

    def _colbert_rerank(self, query: str, ids: list[int], per_mode: dict) -> list[tuple[int, float]]:
        chunks = self.store.get_chunks(ids)
        vectors = self.embedder.colbert([query, *[c.text for c in chunks]])
        per_mode["colbert"] = {c.id: colbert_score(vectors[0], v) for c, v in zip(chunks, vectors[1:], strict=True)}
        scored = []
        for c in chunks:
            scores = {m: s[c.id] for m, s in per_mode.items() if c.id in s}
            scored.append((c.id, combined_score(scores)))
        return sorted(scored, key=lambda kv: (-kv[1], kv[0]))
