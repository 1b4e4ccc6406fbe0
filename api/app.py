"""The FastAPI app. The lifespan builds the Temporal client and the DB engine once; handlers get
them through `api/deps.py`. OpenAPI docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Engine
from temporalio.client import Client

from api import errors
from api.routes import costs, health, runs, shadow, versions
from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import connect


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
    app.include_router(runs.router)
    app.include_router(costs.router)
    app.include_router(shadow.router)  # before versions: /versions/shadow is not an id
    app.include_router(versions.router)
    app.include_router(health.router)
    return app
