"""The dashboard's pages. Each page does what an API route does, so it needs the same scope: the
table below names, for every page, the service operation of `services.access.ALLOWED` it
mirrors, and every page router checks it before the page runs (`page_scope`). A page missing
from the table is refused — tests/test_dashboard.py checks that every page is in it and that
each scope gets the API's answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dashboard.sessions import Viewer, viewer
from services.access import require
from services.errors import Forbidden

# (method, path) -> the operation it mirrors; None: any signed-in key (health).
PAGES: dict[tuple[str, str], str | None] = {
    ("GET", "/ui/runs"): "runs.read",
    ("GET", "/ui/runs/rows"): "runs.read",
    ("POST", "/ui/runs"): "runs.start",
    ("GET", "/ui/runs/{run_id}"): "runs.read",
    ("GET", "/ui/runs/{run_id}/live"): "runs.read",
    ("GET", "/ui/runs/{run_id}/events"): "runs.read",
    ("POST", "/ui/runs/{run_id}/approvals/{call_id}"): "runs.approve",
    ("POST", "/ui/runs/{run_id}/cancel"): "runs.cancel",
    ("POST", "/ui/runs/{run_id}/budget"): "runs.budget",
    ("GET", "/ui/runs/{run_id}/files/{path:path}"): "runs.read",
    ("GET", "/ui/runs/{run_id}/download/{path:path}"): "runs.read",
    ("GET", "/ui/runs/{run_id}/intents/{intent_id}"): "runs.read",
    ("GET", "/ui/costs"): "costs.read",
    ("GET", "/ui/costs.csv"): "costs.read",
    ("GET", "/ui/versions"): "versions.read",
    ("POST", "/ui/versions/{version_id}/activate"): "versions.change",
    ("POST", "/ui/versions/rollback"): "versions.change",
    ("POST", "/ui/versions/{version_id}/shadow"): "shadow.change",
    ("GET", "/ui/health"): None,
}


async def page_scope(request: Request, v: Annotated[Viewer, Depends(viewer)]) -> None:
    """Refuse (403, the API's words) a viewer whose key's scope the page's operation excludes."""
    route = request.scope.get("route")
    key = ("GET" if request.method == "HEAD" else request.method, getattr(route, "path", ""))
    if key not in PAGES:
        raise Forbidden("this page has no scope rule; nobody may open it")
    operation = PAGES[key]
    if operation is not None:
        require(v.principal, operation)
