"""Request-scoped access to what the lifespan built: settings, Temporal client, DB engine."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from temporalio.client import Client

from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _client(request: Request) -> Client:
    return request.app.state.temporal  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]
TemporalDep = Annotated[Client, Depends(_client)]


def _tracing(request: Request) -> Tracing:
    return request.app.state.tracing  # type: ignore[no-any-return]


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


TracingDep = Annotated[Tracing, Depends(_tracing)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
