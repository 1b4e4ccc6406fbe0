"""The FastAPI app. The lifespan builds the Temporal client and the DB engine once; handlers get
them through `api/deps.py`. OpenAPI docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Engine
from temporalio.client import Client

from api import errors, security
from api.routes import costs, health, keys, runs, shadow, versions
from crewline import keys as key_store
from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import connect
from versioning.bundle import MAX_BUNDLE_BYTES

log = structlog.get_logger("crewline.api")


def create_app(
    settings: Settings | None = None,
    *,
    client: Client | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = engine or make_engine(settings.resolved_database_url)
        app.state.temporal = client or await connect(settings, lazy=True)
        said = await run_in_threadpool(key_store.ensure_admin, settings, app.state.engine)
        if said:
            log.info("api.admin_key", detail=said)
        yield
        if engine is None:
            app.state.engine.dispose()

    app = FastAPI(
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
    return app
