"""`/health`: is the API up, can it reach its database and Temporal, is an LLM provider set, and
what state are the workers' circuit breakers in (as last persisted by each worker)?"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, text

from api.deps import EngineDep, SettingsDep, TemporalDep
from crewline.db import breakers

router = APIRouter(tags=["health"])


def _database(engine: Engine) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        rows = [b.model_dump(exclude={"id"}) for b in breakers(engine)]
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}, []
    return {"ok": True}, rows


@router.get("/health")
async def health(
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> dict[str, Any]:
    """Each part's state; 503 if any is down. The provider is probed (its model list, cached
    for 10 s), so a configured but unreachable endpoint shows as down."""
    database, breaker_rows = await run_in_threadpool(_database, engine)
    temporal: dict[str, Any] = {"ok": True, "address": settings.temporal_address}
    try:
        await asyncio.wait_for(client.service_client.check_health(), timeout=3)
    except Exception as exc:
        temporal.update(ok=False, error=type(exc).__name__)
    llm = await request.app.state.provider_probe.check(settings)
    parts = {"api": {"ok": True}, "database": database, "temporal": temporal, "llm": llm}
    healthy = all(part["ok"] for part in parts.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if healthy else "degraded", **parts, "breakers": breaker_rows}
