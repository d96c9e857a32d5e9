"""OpenAI's embeddings API: /v1/embeddings and /v1/models, in OpenAI's shapes (errors too, see errors.py)."""

from __future__ import annotations

import base64

from ovembed.errors import validation
from ovembed.server import schemas
from ovembed.server.errors import JSONResponse
from ovembed.server.inference import embed, usage
from ovembed.server.state import Config, Registry
from ovembed.server.token_ids import embed_token_ids, token_id_lists


async def openai_embeddings(req: schemas.OpenAIEmbeddingRequest, registry: Registry, settings: Config):
    if req.input == []:
        raise validation("input must not be empty")
    entry = registry.get(req.model)
    if req.dimensions is not None and req.dimensions != entry.manifest.dimension:
        raise validation(f"dimensions={req.dimensions} is not supported: {entry.model_id} has "
                         f"{entry.manifest.dimension} dimensions and does not truncate them")
    sequences = token_id_lists(req.input)
    if sequences is not None:  # OpenAI clients' token ids, read as settings.token_ids says
        result = await embed_token_ids(registry, settings, entry, sequences)
    else:
        texts = [req.input] if isinstance(req.input, str) else req.input
        result = await embed(registry, settings, entry, texts, ["dense"], normalize=True, truncate=True)
    if req.encoding_format == "base64":
        vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.dense]
    else:
        vectors = list(result.dense)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": req.model or entry.model_id, "usage": usage(result)})


async def openai_models(registry: Registry):
    return {"object": "list", "data": [
        {"id": e.model_id, "object": "model", "created": 0, "owned_by": "ovembed", "aliases": [e.name, *e.aliases],
         "fingerprint": e.fingerprint}
        for e in registry.entries
    ]}
