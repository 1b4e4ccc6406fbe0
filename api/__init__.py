"""The HTTP API: thin routes over `services`, one door — `install(app, settings, metrics)` adds
the routes, the transport's security, the error shapes and the metrics to the app the composition
root (`cli/server.py`) builds."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api import errors, security
from api.routes import costs, health, keys, metrics, runs, shadow, versions
from crewline.metrics import Metrics
from crewline.settings import Settings
from services.models import money_schema_up_to
from versioning.bundle import MAX_BUNDLE_BYTES

# A client told the database is unavailable tries again after this long.
DB_RETRY_AFTER_S = 5


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The app database is down, locked past its busy timeout or full: 503 with `Retry-After`
    (a request that failed here wrote nothing: its transaction rolled back)."""
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is unavailable right now; nothing was changed, retry"},
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


def install(app: FastAPI, settings: Settings, registry: Metrics) -> None:
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(DBAPIError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    # The request counter first: middleware added later runs earlier, so a request is counted
    # only once the transport checks (Host, body cap) let it in.
    metrics.install(app, registry)
    security.install(app, settings, larger_bodies={("POST", "/versions"): MAX_BUNDLE_BYTES})
    app.include_router(runs.router)
    app.include_router(costs.router)
    app.include_router(shadow.router)  # before versions: /versions/shadow is not an id
    app.include_router(versions.router)
    app.include_router(keys.router)
    app.include_router(health.router)
    _state_the_deployment_limits(app, settings)


def _state_the_deployment_limits(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI schema states this deployment's budget cap (MAX_BUDGET_USD), so a client —
    or a fuzzer — reads the limit the server enforces instead of finding it by a 422."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        capped = money_schema_up_to(settings.max_budget_usd)
        for model in ("RunCreate", "BudgetRaiseIn"):
            field = schema["components"]["schemas"][model]["properties"]["budget_usd"]
            nullable = {"type": "null"} in field.get("anyOf", [])
            money = next(b for b in field["anyOf"] if b != {"type": "null"}) if nullable else field
            kept = {k: v for k, v in money.items() if k in ("title", "exclusiveMinimum")}
            money.clear()
            money.update(capped | kept)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
