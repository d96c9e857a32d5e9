"""The RAG client: chunk, embed and store documents; search dense | sparse | hybrid with an optional ColBERT
rerank; and fill missing vectors lazily when chunks are read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ovembed.embedders import Embedder
from ovembed.engine.scoring import colbert_score, combined_score
from ovembed.errors import validation
from ovembed.rag.documents import Document, chunk_spans
from ovembed.store import Chunk, ChunkInput, Space, Store

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)


@dataclass
class Result:
    chunk: Chunk
    score: float
    scores: dict[str, float]


class RAG:
    """The RAG client over one store and one model. `space` names the space to work on (`--space`); by default
    the store's active space. The model must make that space's vectors (same model, wherever it is reached)."""

    def __init__(self, store: Store, embedder: Embedder, space: str | None = None):
        self.store = store
        self.embedder = embedder
        self.space_name = space

    def _use(self, space: Space) -> Space:
        mine = self.embedder.space
        if not space.same_model(mine):
            raise validation(f"space '{space.name}' holds {space.describe()} vectors but this model makes "
                             f"{mine.describe()}; use that space's model (or no --model/--url: the store knows it), "
                             "or `ovembed spaces activate` another space")
        if mine.fingerprint and not space.fingerprint:  # a space from before fingerprints: record this model's
            space = self.store.create_space(replace(mine, name=space.name))
        self.embedder.space = space  # reached through a folder or a service, it fills the space under its name
        return space

    def _ingest_space(self) -> Space:
        active = self.store.active_space()
        if active is None:  # the first space: named by --space, else after the model
            self.embedder.space = self.store.resolve_space(self.embedder.space, self.space_name)
            return self.embedder.space
        if self.space_name and self.store.find_space(self.space_name).name != active.name:
            raise validation(f"ingest fills the active space '{active.name}'; --space names another. Leave --space "
                             f"out, or `ovembed spaces activate {self.space_name}` first")
        return self._use(active)

    def _search_space(self) -> Space:
        if self.space_name:
            return self._use(self.store.find_space(self.space_name))
        active = self.store.active_space()
        if active is None:
            raise validation("the store has no space yet: `ovembed ingest` documents first")
        return self._use(active)

    def ingest(self, docs: list[Document], chunk_tokens: int = 512, overlap: int = 64, batch: int = 64) -> dict:
        """Chunk, embed with the active space's model and store; re-ingesting an id replaces it."""
        if not 0 <= overlap < chunk_tokens:
            raise validation("--overlap must be at least 0 and smaller than --chunk-tokens")
        chunk_tokens = min(chunk_tokens, self.embedder.max_tokens)
        space = self._ingest_space()
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
                # Every other space got a pending row with the chunks (reembed or activation fills it). A crash
                # between these two writes leaves this space's rows pending too: search fills them (lazy).
                self.store.fill_missing(space.name, self.embedder.vectors, chunk_ids=ids)
                stats["documents"] += 1
                stats["chunks"] += len(ids)
        return stats

    def ensure_complete(self, space: Space, page: int = 256) -> int:
        """Embed every chunk pending in `space` (the safety net: a chunk ingested through another model while
        this space was not active, or between an ingest's chunk write and its vector write)."""
        if not self.store.has_pending(space.name):
            return 0  # the common case: one index probe, no lock, no counting
        return self.store.fill_pending(space.name, self.embedder.vectors, page=page)

    def read(self, chunk_ids: list[int], target: Space | None = None) -> list[Chunk]:
        """Chunks by id; ones with no vector in the target space (default: this embedder's) get one now."""
        target = target or self.embedder.space
        self.store.fill_missing(target.name, self.embedder.vectors, chunk_ids=chunk_ids)
        return self.store.get_chunks(chunk_ids)

    def search(self, query: str, k: int = 10, mode: str = "dense", rerank: bool = False,
               candidates: int = 50) -> list[Result]:
        if mode not in ("dense", "sparse", "hybrid"):
            raise validation("--mode must be dense, sparse or hybrid")
        space = self._search_space()
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
