"""Assembles the service: the model registry and metrics on `app.state`, middlewares, error handlers, routes.
Routes live in `routes/`, errors are mapped in `errors.py`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ovembed import __version__
from ovembed.config import Settings
from ovembed.server import routes, schemas, state
from ovembed.server.errors import EXCEPTION_HANDLERS, JSONResponse
from ovembed.server.metrics import Metrics
from ovembed.server.middleware import ApiKeys, BodyLimit, Observability
from ovembed.server.registry import ModelRegistry

log = logging.getLogger("ovembed.server")


@asynccontextmanager
async def lifespan(app: FastAPI):
    registry: ModelRegistry = app.state.registry
    if app.state.settings.preload:
        registry.preload_in_background()
    yield
    # Uvicorn has already drained in-flight requests; finish whatever is still queued, then stop.
    await asyncio.to_thread(registry.close)


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    for entry in registry.entries:
        if entry.state == "error":
            log.error("model unavailable", extra={"model": entry.spec, "error": entry.error})

    app = FastAPI(title="ovembed", version=__version__, lifespan=lifespan, default_response_class=JSONResponse,
                  responses=schemas.ERRORS, exception_handlers=EXCEPTION_HANDLERS)
    state.attach(app, settings, registry, metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKeys, keys=settings.api_keys)
    app.add_middleware(Observability, metrics=metrics)  # outermost: sees 401s and 413s too
    routes.register(app)
    return app
