"""The FastAPI app. The lifespan builds the Temporal client and the DB engine once; handlers get
them through `api/deps.py`. OpenAPI docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine
from temporalio.client import Client

import dashboard
from api import errors, security
from api.probe import ProviderProbe
from api.routes import costs, health, keys, metrics, runs, shadow, versions
from crewline import keys as key_store
from crewline.db import make_engine
from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing, setup_tracing
from crewline.temporal import connect
from versioning.bundle import MAX_BUNDLE_BYTES

log = structlog.get_logger("crewline.api")


def create_app(
    settings: Settings | None = None,
    *,
    client: Client | None = None,
    engine: Engine | None = None,
    tracing: Tracing | None = None,
    registry: Metrics | None = None,
) -> FastAPI:
    """The app. A `client` given here must carry `tracing.interceptors()` for runs to join the
    request's trace; without one, the lifespan connects with them."""
    settings = settings or Settings()
    own_tracing = tracing is None
    tracing = tracing or setup_tracing(settings, "crewline-api")
    registry = registry or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.tracing = tracing
        app.state.provider_probe = ProviderProbe()
        app.state.engine = engine or make_engine(settings.resolved_database_url)
        app.state.temporal = client or await connect(
            settings, lazy=True, interceptors=tracing.interceptors()
        )
        runs_collector = metrics.watch_runs(registry, app.state.engine)
        said = await run_in_threadpool(key_store.ensure_admin, settings, app.state.engine)
        if said:
            log.info("api.admin_key", detail=said)
        yield
        registry.registry.unregister(runs_collector)
        if engine is None:
            app.state.engine.dispose()
        if own_tracing:
            tracing.shutdown()

    # The docs' Swagger UI and ReDoc assets are served from the fastapi-offline package, not a
    # CDN: /docs works on an air-gapped machine.
    app = FastAPIOffline(
        title="crewline",
        version="0.1.0",
        description="Durable multi-agent AI workflows on Temporal.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    security.install(app, settings, larger_bodies={("POST", "/versions"): MAX_BUNDLE_BYTES})
    app.include_router(runs.router)
    app.include_router(costs.router)
    app.include_router(shadow.router)  # before versions: /versions/shadow is not an id
    app.include_router(versions.router)
    app.include_router(keys.router)
    app.include_router(health.router)
    metrics.install(app, registry)
    dashboard.install(app)
    if tracing.provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=tracing.provider,
            excluded_urls="health,metrics",
            exclude_spans=["receive", "send"],  # one server span per request, not three
        )
    return app
