"""`/health` (open, like the docs): each part's state — `services.health` — and 503 if any is
down; `POST /admin/reconcile` (admin): a reconciler pass now, and what it fixed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from api.security import AUTH_RESPONSES, CanReconcile
from services import ServicesDep

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={
        503: {"description": "a part is down: the same report, saying which and why"},
    },
)
async def health(response: Response, services: ServicesDep) -> dict[str, Any]:
    """Each part's state; 503 if any is down. The provider is probed (its model list, cached
    for 10 s), so a configured but unreachable endpoint shows as down."""
    report = await services.health.report()
    if report["status"] != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report


@router.post("/admin/reconcile", responses=AUTH_RESPONSES)
async def reconcile(services: ServicesDep, key: CanReconcile) -> dict[str, Any]:
    """Make the database agree with Temporal now (the reconciler also runs on its own)."""
    return (await services.reconciler.on_request(key)).as_dict()
