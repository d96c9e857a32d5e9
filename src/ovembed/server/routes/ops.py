"""Operations routes: /health (readiness), /models/status (what is served) and /metrics (Prometheus)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from ovembed.server.errors import JSONResponse
from ovembed.server.registry import ModelEntry
from ovembed.server.state import Config, Prometheus, Registry


async def health(registry: Registry, settings: Config):
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
        "outputs": m.outputs if m else [], "fingerprint": entry.fingerprint,
        "load_seconds": entry.load_seconds, "error": entry.error,
    }


async def models_status(registry: Registry):
    default = model_info(registry.default)
    return {
        "embedding_model": default["id"], "embedding_dimension": default["dimension"],
        "embedding_loaded": default["loaded"], "precision": default["precision"],
        "max_length": default["max_length"], "outputs": default["outputs"],
        "models": [model_info(e) for e in registry.entries],
    }


async def prometheus(metrics: Prometheus):  # queue gauges read the batchers live (Metrics.watch_queue)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
