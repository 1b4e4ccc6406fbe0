"""Health: the API, database, Temporal and the LLM provider (probed), and each worker's circuit
breakers with when an open one lets a probe through."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from dashboard.pages import page_scope
from dashboard.sessions import Viewer, viewer
from dashboard.web import page
from services import ServicesDep

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(page_scope)])
ViewerDep = Annotated[Viewer, Depends(viewer)]
PARTS = ("api", "database", "temporal", "workers", "llm", "sandbox")


@router.get("/health", response_class=HTMLResponse)
async def health_page(request: Request, v: ViewerDep, services: ServicesDep) -> HTMLResponse:
    report = await services.health.report()
    settings = services.ctx.settings
    open_for = timedelta(seconds=settings.breaker_open_s)
    for row in report["breakers"]:
        opened = row.get("opened_at")
        row["probe_at"] = opened + open_for if row["state"] == "OPEN" and opened else None
    parts = [(name, report[name]) for name in (*PARTS, *services.health.parts) if name in report]
    return await page(
        request, "health.html", v, report=report, parts=parts,
        threshold=settings.breaker_threshold,
    )  # fmt: skip
