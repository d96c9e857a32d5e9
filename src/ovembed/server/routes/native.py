"""ovembed's own routes: the legacy /embeddings contract, /rerank with BGE-M3's combined score, and TEI's shapes
for /embed_sparse, plus /tokenize (what chunking clients need)."""

from __future__ import annotations

import asyncio

from ovembed.engine import Embeddings
from ovembed.engine.scoring import colbert_score, combined_score, dense_score, lexical_score
from ovembed.errors import validation
from ovembed.server import schemas
from ovembed.server.errors import JSONResponse
from ovembed.server.inference import check_sizes, embed, usage
from ovembed.server.state import Config, Registry


async def embeddings(req: schemas.EmbeddingsRequest, registry: Registry, settings: Config):
    entry = registry.get(req.model)
    wanted = ["dense"] + ["sparse"] * req.return_sparse + ["colbert"] * req.return_colbert
    result = await embed(registry, settings, entry, req.texts, wanted, normalize=req.normalize, truncate=req.truncate)
    body = {"model": entry.model_id, "dimension": entry.manifest.dimension, "embeddings": result.dense,
            "usage": usage(result)}
    if req.return_sparse:
        body["sparse"] = result.sparse
    if req.return_colbert:
        body["colbert"] = result.colbert
    return JSONResponse(body)


async def embed_sparse(req: schemas.SparseRequest, registry: Registry, settings: Config):
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise validation("inputs must not be empty")
    result = await embed(registry, settings, registry.get(req.model), texts, ["sparse"], normalize=False,
                         truncate=req.truncate)
    return JSONResponse([[{"index": i, "value": v} for i, v in zip(s["indices"], s["values"])] for s in result.sparse])


async def rerank(req: schemas.RerankRequest, registry: Registry, settings: Config):
    entry = registry.get(req.model)
    available = (await registry.ready(entry)).model.outputs
    weights = {k: v for k, v in (req.weights or schemas.RerankWeights()).model_dump().items() if k in available}
    if sum(weights.values()) <= 0:
        raise validation(f"weights must give a positive weight to one of {', '.join(available)}")
    result = await embed(registry, settings, entry, [req.query, *req.texts], list(weights), normalize=True,
                         truncate=req.truncate)
    results = ranked(result, weights, req.texts if req.return_text else None)
    return JSONResponse({"model": entry.model_id, "results": results[: req.top_n], "usage": usage(result)})


def ranked(result: Embeddings, weights: dict[str, float], texts: list[str] | None) -> list[dict]:
    """Rows 1.. of `result` scored against row 0 (the query), best first; `texts` are echoed when given."""
    results = []
    for i in range(1, len(result.token_counts)):
        scores = {}
        if result.dense is not None:
            scores["dense"] = dense_score(result.dense[0], result.dense[i])
        if result.sparse is not None:
            scores["sparse"] = lexical_score(result.sparse[0], result.sparse[i])
        if result.colbert is not None:
            scores["colbert"] = colbert_score(result.colbert[0], result.colbert[i])
        item = {"index": i - 1, "score": combined_score(scores, weights), "scores": scores}
        if texts is not None:
            item["text"] = texts[i - 1]
        results.append(item)
    results.sort(key=lambda r: -r["score"])
    return results


async def tokenize(req: schemas.TokenizeRequest, registry: Registry, settings: Config):
    check_sizes(req.texts, settings)
    entry = await registry.ready(registry.get(req.model))
    tokenizer = entry.model.tokenizer
    ids, full = await asyncio.to_thread(tokenizer.encode_with_lengths, req.texts, req.truncate)
    body = {"model": entry.model_id, "max_length": tokenizer.max_length, "tokens": ids,
            "counts": [len(x) for x in ids], "truncated": [f > len(x) for f, x in zip(full, ids)]}
    if req.return_offsets:
        body["offsets"] = await asyncio.to_thread(tokenizer.offsets, req.texts)
    return JSONResponse(body)
