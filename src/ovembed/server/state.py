"""What route handlers receive by injection (as TEI's take `Extension<Infer>`): the app's model registry,
settings and metrics, which `create_app` puts on `app.state` once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from ovembed.config import Settings
from ovembed.server.metrics import Metrics
from ovembed.server.registry import ModelRegistry


def attach(app: FastAPI, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
    app.state.settings, app.state.registry, app.state.metrics = settings, registry, metrics


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


Registry = Annotated[ModelRegistry, Depends(_registry)]
Config = Annotated[Settings, Depends(_settings)]
Prometheus = Annotated[Metrics, Depends(_metrics)]
