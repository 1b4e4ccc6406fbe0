"""The composition root of the API process: one FastAPI app that mounts the HTTP API (`api`) and
the dashboard (`dashboard`) — neither imports the other — over one set of services, and runs the
reconciler beside them.

The lifespan builds what the services share once: the database engine, the Temporal client (lazy,
so the app starts — and says so in /health — while Temporal is down), the admin key on a fresh
database, and the reconciler's task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from temporalio.client import Client

import api
import dashboard
from api.routes import metrics as metrics_routes
from crewline.db import make_engine
from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing, setup_tracing
from crewline.temporal import connect
from services import Context, Services
from services import keys as key_store

log = structlog.get_logger("crewline.api")
# Open event streams hold a connection each: at shutdown they are ended first, and uvicorn gives
# whatever is still open this long.
GRACEFUL_SHUTDOWN_S = 5
# How long start-up waits for the admin key to be written before serving (then it keeps trying).
ADMIN_KEY_WAIT_S = 5.0


async def _ensure_admin(settings: Settings, engine: Engine) -> None:
    """The admin key on a fresh database — retried while the database is unavailable, so the API
    starts (and says so in /health) instead of dying with it."""
    delay = 1.0
    while True:
        try:
            said = await run_in_threadpool(key_store.ensure_admin, settings, engine)
        except DBAPIError as exc:
            log.warning("api.admin_key_pending", error=str(exc.orig)[:200], retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        if said:
            log.info("api.admin_key", detail=said)
        return


def create_app(
    settings: Settings | None = None,
    *,
    client: Client | None = None,
    engine: Engine | None = None,
    tracing: Tracing | None = None,
    registry: Metrics | None = None,
    reconcile: bool = True,
    health_parts: dict[str, Callable[[], dict[str, Any]]] | None = None,
) -> FastAPI:
    """The app. A `client` given here must carry `tracing.interceptors()` for runs to join the
    request's trace; without one, the lifespan connects with them. `reconcile`: run the
    reconciler's loop in this process (every API process may; its passes are idempotent)."""
    settings = settings or Settings()
    own_tracing = tracing is None
    tracing = tracing or setup_tracing(settings, "crewline-api")
    registry = registry or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_engine = engine or make_engine(settings.resolved_database_url)
        temporal = client or await connect(settings, lazy=True, interceptors=tracing.interceptors())
        services = Services(Context(settings, the_engine, temporal, registry, tracing))
        services.health.parts["reconciler"] = services.reconciler.health
        services.health.parts.update(health_parts or {})
        app.state.services = services
        app.state.settings = settings
        runs_collector = metrics_routes.watch_runs(registry, the_engine)
        admin = asyncio.create_task(_ensure_admin(settings, the_engine))
        with contextlib.suppress(TimeoutError):  # usually done at once; else it goes on trying
            await asyncio.wait_for(asyncio.shield(admin), timeout=ADMIN_KEY_WAIT_S)
        loop = None
        if reconcile:
            loop = asyncio.create_task(services.reconciler.run_forever(settings.reconcile_every_s))
        yield
        await services.events.hub.close()
        admin.cancel()
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        registry.registry.unregister(runs_collector)
        if engine is None:
            the_engine.dispose()
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
    api.install(app, settings, registry)
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


def serve_config(app: FastAPI, settings: Settings) -> Any:
    """uvicorn's settings for the API (`crewline api`, `crewline up`): at most
    API_MAX_CONNECTIONS at once — each event stream is one — with the process's open-file limit
    raised to fit them where the system allows."""
    import uvicorn

    _files_for(settings.api_max_connections + 256)
    return uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning",
        limit_concurrency=settings.api_max_connections,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )  # fmt: skip


def _files_for(needed: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            if target < needed:
                log.warning("api.open_files_limited", limit=target, wanted=needed)
    except (ImportError, ValueError, OSError) as exc:  # not POSIX, or not allowed
        log.warning("api.open_files_unchanged", error=str(exc)[:200])


async def stop_streams(app: FastAPI) -> None:
    """End the app's event streams (before its server stops: they would hold it open)."""
    services = getattr(app.state, "services", None)
    if services is not None:
        await services.events.hub.close()
