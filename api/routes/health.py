"""`/health`: is the API up, can it reach its database and Temporal, is an LLM provider set?"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from api.deps import EngineDep, SettingsDep, TemporalDep
from crewline.settings import ConfigurationError

router = APIRouter(tags=["health"])


def _db_ok(engine: EngineDep) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/health")
async def health(
    response: Response, settings: SettingsDep, engine: EngineDep, client: TemporalDep
) -> dict[str, object]:
    report: dict[str, object] = {"api": {"ok": True}}
    try:
        await run_in_threadpool(_db_ok, engine)
        report["database"] = {"ok": True}
    except Exception as exc:
        report["database"] = {"ok": False, "error": type(exc).__name__}
    try:
        await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        report["temporal"] = {"ok": True, "address": settings.temporal_address}
    except Exception as exc:
        report["temporal"] = {
            "ok": False,
            "address": settings.temporal_address,
            "error": type(exc).__name__,
        }
    try:
        report["llm"] = {"ok": True, "provider": settings.provider()}
    except ConfigurationError as exc:
        report["llm"] = {"ok": False, "error": str(exc)}
    healthy = all(part["ok"] for part in report.values())  # type: ignore[index]
    report["status"] = "ok" if healthy else "degraded"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report
