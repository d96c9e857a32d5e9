"""Routes: validate -> engine (through the batcher) -> shape the response. Errors are mapped in errors.py."""

from __future__ import annotations

import asyncio
import base64
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from ovembed import __version__
from ovembed.config import Settings
from ovembed.engine import Embeddings
from ovembed.engine.batcher import Overloaded
from ovembed.engine.outputs import colbert_score, combined_score, dense_score, lexical_score
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.server import schemas
from ovembed.server.errors import JSONResponse, error_response
from ovembed.server.metrics import Metrics
from ovembed.server.middleware import ApiKeys, BodyLimit, Observability
from ovembed.server.registry import ModelEntry, ModelRegistry

log = logging.getLogger("ovembed.server")
# Up to this many characters per request are tokenized on the event loop; more go to a thread, so a
# 10 MB text cannot stall other requests.
INLINE_TOKENIZE_CHARS = 20_000


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    for entry in registry.entries:
        if entry.state == "error":
            log.error("model unavailable", extra={"model": entry.spec, "error": entry.error})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.preload:
            registry.preload_in_background()
        yield
        # Uvicorn has already drained in-flight requests; finish whatever is still queued, then stop.
        await asyncio.to_thread(registry.close)

    app = FastAPI(title="ovembed", version=__version__, lifespan=lifespan, default_response_class=JSONResponse,
                  responses=schemas.ERRORS)
    app.state.registry = registry
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKeys, keys=settings.api_keys)
    app.add_middleware(Observability, metrics=metrics)  # outermost: sees 401s and 413s too

    @app.exception_handler(OvembedError)
    async def _domain_error(request: Request, exc: OvembedError):
        return error_response(request.url.path, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            return error_response(request.url.path, ErrorKind.VALIDATION,
                                  f"Content-Type must be application/json, not '{content_type or 'none'}'", 415)
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = errors[0].get("ctx", {}).get("error", "")
            return error_response(request.url.path, ErrorKind.VALIDATION, f"malformed JSON body: {detail}", 400)
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return error_response(request.url.path, ErrorKind.VALIDATION, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        kind = ErrorKind.MODEL_NOT_FOUND if exc.status_code == 404 else ErrorKind.VALIDATION
        return error_response(request.url.path, kind, str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(request.url.path, ErrorKind.BACKEND, f"internal error: {type(exc).__name__}")

    def check_sizes(texts: list[str]) -> None:
        """Counts and characters are bounded before tokenizing: the tokenizer needs ~100-250 bytes of memory
        per character of a text, so 16 MB of text would briefly take gigabytes (and half a minute)."""
        if len(texts) > settings.max_texts:
            raise validation(f"{len(texts)} texts in one request; the limit is {settings.max_texts}")
        longest = max(range(len(texts)), key=lambda i: len(texts[i]), default=None)
        if longest is not None and len(texts[longest]) > settings.max_text_chars:
            raise OvembedError(ErrorKind.INPUT_TOO_LONG, f"text {longest} has {len(texts[longest])} characters; the "
                               f"limit is {settings.max_text_chars} per text: split it")
        total = sum(len(t) for t in texts)
        if total > settings.max_request_chars:
            raise OvembedError(ErrorKind.INPUT_TOO_LONG, f"{total} characters in one request; the limit is "
                               f"{settings.max_request_chars}: send fewer texts per request")

    async def embed(entry: ModelEntry, texts: list[str], wanted: list[str], normalize: bool, truncate: bool) -> Embeddings:
        check_sizes(texts)
        entry = await registry.ready(entry)
        entry.model.require_outputs(wanted)
        if sum(len(t) for t in texts) < INLINE_TOKENIZE_CHARS:
            ids = entry.model.tokenize(texts, truncate)  # microseconds: a thread hop would cost more
        else:
            ids = await asyncio.to_thread(entry.model.tokenize, texts, truncate)
        try:
            future = entry.batcher.submit(ids, wanted)
        except Overloaded as exc:
            metrics.overloaded.labels(entry.name).inc()
            raise OvembedError(ErrorKind.OVERLOADED, f"the service is busy ({exc}); retry shortly") from None
        result = await asyncio.wrap_future(future)
        return result.normalized() if normalize else result

    def usage(result: Embeddings) -> dict:
        tokens = sum(result.token_counts)
        return {"prompt_tokens": tokens, "total_tokens": tokens}

    # --- health and status -------------------------------------------------------------------------

    @app.get("/health", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    async def health():
        states = {e.name: e.state for e in registry.entries}
        failed = [e for e in registry.entries if e.state == "error"]
        if failed:
            detail = "; ".join(f"{e.name}: {e.error}" for e in failed)
            return JSONResponse({"status": "error", "detail": detail, "models": states}, status_code=503)
        if settings.preload and any(s != "ready" for s in states.values()):
            return JSONResponse({"status": "loading", "detail": "models are loading", "models": states},
                                status_code=503, headers={"Retry-After": "5"})
        return {"status": "ok", "detail": None, "models": states}

    def model_info(entry: ModelEntry) -> dict:
        m = entry.manifest
        return {
            "name": entry.name, "id": entry.model_id, "aliases": entry.aliases, "state": entry.state,
            "loaded": entry.state == "ready", "dimension": m.dimension if m else None,
            "precision": m.precision if m else None, "max_length": m.max_length if m else None,
            "outputs": m.outputs if m else [], "load_seconds": entry.load_seconds, "error": entry.error,
        }

    @app.get("/models/status", response_model=schemas.ModelsStatus)
    async def models_status():
        default = model_info(registry.default)
        return {
            "embedding_model": default["id"], "embedding_dimension": default["dimension"],
            "embedding_loaded": default["loaded"], "precision": default["precision"],
            "max_length": default["max_length"], "outputs": default["outputs"],
            "models": [model_info(e) for e in registry.entries],
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():  # queue gauges read the batchers live (Metrics.watch_queue)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- embeddings ---------------------------------------------------------------------------------

    @app.post("/embeddings", response_model=schemas.EmbeddingsResponse)
    async def embeddings(req: schemas.EmbeddingsRequest):
        entry = registry.get(req.model)
        wanted = ["dense"] + ["sparse"] * req.return_sparse + ["colbert"] * req.return_colbert
        result = await embed(entry, req.texts, wanted, req.normalize, req.truncate)
        body = {"model": entry.model_id, "dimension": entry.manifest.dimension, "embeddings": result.dense,
                "usage": usage(result)}
        if req.return_sparse:
            body["sparse"] = result.sparse
        if req.return_colbert:
            body["colbert"] = result.colbert
        return JSONResponse(body)

    @app.post("/v1/embeddings", response_model=schemas.OpenAIEmbeddingResponse, responses=schemas.OPENAI_ERRORS)
    async def openai_embeddings(req: schemas.OpenAIEmbeddingRequest):
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise validation("input must not be empty")
        if not all(isinstance(t, str) for t in texts):
            raise validation("input must be text: token-id arrays are not accepted, since they would be another "
                             "tokenizer's ids (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))")
        entry = registry.get(req.model)
        if req.dimensions is not None and req.dimensions != entry.manifest.dimension:
            raise validation(f"dimensions={req.dimensions} is not supported: {entry.model_id} has "
                             f"{entry.manifest.dimension} dimensions and does not truncate them")
        result = await embed(entry, texts, ["dense"], normalize=True, truncate=True)
        if req.encoding_format == "base64":
            vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.dense]
        else:
            vectors = list(result.dense)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": req.model or entry.model_id,
                             "usage": usage(result)})

    @app.get("/v1/models", responses=schemas.OPENAI_ERRORS)
    async def openai_models():
        return {"object": "list", "data": [
            {"id": e.model_id, "object": "model", "created": 0, "owned_by": "ovembed", "aliases": [e.name, *e.aliases]}
            for e in registry.entries
        ]}

    @app.post("/embed_sparse", response_model=list[list[schemas.SparseValue]])
    async def embed_sparse(req: schemas.SparseRequest):
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        if not texts:
            raise validation("inputs must not be empty")
        result = await embed(registry.get(req.model), texts, ["sparse"], normalize=False, truncate=req.truncate)
        return JSONResponse([[{"index": i, "value": v} for i, v in zip(s["indices"], s["values"])] for s in result.sparse])

    @app.post("/rerank", response_model=schemas.RerankResponse)
    async def rerank(req: schemas.RerankRequest):
        entry = registry.get(req.model)
        available = (await registry.ready(entry)).model.outputs
        weights = {k: v for k, v in (req.weights or schemas.RerankWeights()).model_dump().items() if k in available}
        if sum(weights.values()) <= 0:
            raise validation(f"weights must give a positive weight to one of {', '.join(available)}")
        result = await embed(entry, [req.query, *req.texts], list(weights), normalize=True, truncate=req.truncate)
        results = []
        for i in range(1, len(req.texts) + 1):
            scores = {}
            if result.dense is not None:
                scores["dense"] = dense_score(result.dense[0], result.dense[i])
            if result.sparse is not None:
                scores["sparse"] = lexical_score(result.sparse[0], result.sparse[i])
            if result.colbert is not None:
                scores["colbert"] = colbert_score(result.colbert[0], result.colbert[i])
            item = {"index": i - 1, "score": combined_score(scores, weights), "scores": scores}
            if req.return_text:
                item["text"] = req.texts[i - 1]
            results.append(item)
        results.sort(key=lambda r: -r["score"])
        return JSONResponse({"model": entry.model_id, "results": results[: req.top_n], "usage": usage(result)})

    @app.post("/tokenize", response_model=schemas.TokenizeResponse)
    async def tokenize(req: schemas.TokenizeRequest):
        check_sizes(req.texts)
        entry = await registry.ready(registry.get(req.model))
        tokenizer = entry.model.tokenizer
        ids, full = await asyncio.to_thread(tokenizer.encode_with_lengths, req.texts, req.truncate)
        body = {"model": entry.model_id, "max_length": tokenizer.max_length, "tokens": ids,
                "counts": [len(x) for x in ids], "truncated": [f > len(x) for f, x in zip(full, ids)]}
        if req.return_offsets:
            body["offsets"] = await asyncio.to_thread(tokenizer.offsets, req.texts)
        return JSONResponse(body)

    return app

