"""Every route of the service, registered in one place (as TEI's `run()` does): path, method, handler and the
shapes it documents. Handlers live by API family in `native`, `openai` and `ops`; their order here is the
order of /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from ovembed.server import schemas
from ovembed.server.routes import native, openai, ops


def register(app: FastAPI) -> None:
    get, post = ["GET"], ["POST"]
    app.add_api_route("/health", ops.health, methods=get, response_model=schemas.Health,
                      responses={503: {"model": schemas.Health}})
    app.add_api_route("/models/status", ops.models_status, methods=get, response_model=schemas.ModelsStatus)
    app.add_api_route("/metrics", ops.prometheus, methods=get, include_in_schema=False)
    app.add_api_route("/embeddings", native.embeddings, methods=post, response_model=schemas.EmbeddingsResponse)
    app.add_api_route("/v1/embeddings", openai.openai_embeddings, methods=post,
                      response_model=schemas.OpenAIEmbeddingResponse, responses=schemas.OPENAI_ERRORS)
    app.add_api_route("/v1/models", openai.openai_models, methods=get, responses=schemas.OPENAI_ERRORS)
    app.add_api_route("/embed_sparse", native.embed_sparse, methods=post,
                      response_model=list[list[schemas.SparseValue]])
    app.add_api_route("/rerank", native.rerank, methods=post, response_model=schemas.RerankResponse)
    app.add_api_route("/tokenize", native.tokenize, methods=post, response_model=schemas.TokenizeResponse)
