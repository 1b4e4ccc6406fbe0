"""Versions: the snapshots, which is active and which is the shadow candidate, the prompt diff
between two, the candidate's shadow report with the diverging outputs side by side, the shadow
rate, activate / rollback (admin keys, after a confirmation) and the activation history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from dashboard import render
from dashboard.pages import page_scope
from dashboard.sessions import Viewer, check_csrf, viewer
from dashboard.web import confirm, go, page
from services import Services, ServicesDep
from services.version_models import VERSION_ID_PATTERN, ChangeIn, RollbackIn, ShadowIn

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(page_scope)])
ViewerDep = Annotated[Viewer, Depends(viewer)]
VersionQ = Annotated[str | None, Query(pattern=VERSION_ID_PATTERN)]


async def _report(services: Services, v: Viewer, version: str) -> dict[str, Any]:
    report = await services.shadow.report(v.principal, version)
    pairs = []
    for agent, part in report.per_agent.items():
        for worst in part.worst:
            before, after = render.word_diff(worst.primary_output, worst.shadow_output)
            pairs.append({"agent": agent, "row": worst, "before": before, "after": after})
    return {"report": report, "pairs": pairs}


@router.get("/versions", response_class=HTMLResponse)
async def versions_page(
    request: Request, v: ViewerDep, services: ServicesDep,
    a: VersionQ = None, b: VersionQ = None, report: VersionQ = None,
) -> HTMLResponse:  # fmt: skip
    """`report`: whose shadow report to show (default: the current candidate's). The services
    check the viewer's scope: a `run` key gets the API's 403 here too."""
    listing = await services.versions.listing(v.principal)
    history = await services.versions.history(v.principal, 20)
    ids = [item.id for item in listing.items]
    a = a or (ids[1] if len(ids) > 1 else None)
    b = b or (ids[0] if ids else None)
    diff = None
    if a and b and a != b:
        diff = await services.versions.diff(v.principal, a, b)
    which = report if report in ids else listing.candidate
    shown = await _report(services, v, which) if which else None
    return await page(
        request, "versions.html", v, listing=listing, history=history.items, a=a, b=b,
        diff=diff, shadow=shown, can_roll_back=await services.versions.can_roll_back(),
        diff_html={p: render.code(t, "diff") for p, t in (diff.diffs if diff else {}).items()},
    )  # fmt: skip


@router.post("/versions/{version_id}/activate")
async def activate(
    request: Request, version_id: str, v: ViewerDep, services: ServicesDep,
    reason: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    if confirmed != "yes":
        return await confirm(
            request, v, f"Make {version_id} the active version?",
            "New runs start on it; runs in flight finish on the version that started them.",
            {"reason": reason}, "Activate", "/ui/versions",
        )  # fmt: skip
    await services.versions.activate(
        v.principal, version_id, ChangeIn(reason=reason or "from the dashboard")
    )
    return go(request, "/ui/versions")


@router.post("/versions/rollback")
async def rollback(
    request: Request, v: ViewerDep, services: ServicesDep,
    from_version: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    if confirmed != "yes":
        return await confirm(
            request, v, f"Roll back from {from_version}?",
            "The version active before it becomes active again (one call, instant while its "
            "worker still runs).", {"from_version": from_version, "reason": reason},
            "Roll back", "/ui/versions",
        )  # fmt: skip
    try:
        body = RollbackIn(from_version=from_version or None, reason=reason or "from the dashboard")
    except ValidationError:
        raise HTTPException(422, "not a version id") from None
    await services.versions.rollback(v.principal, body)
    return go(request, "/ui/versions")


@router.post("/versions/{version_id}/shadow")
async def set_shadow(
    request: Request, version_id: str, v: ViewerDep, services: ServicesDep,
    rate: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    try:
        body = ShadowIn(rate=float(rate) / 100)
    except (ValueError, ValidationError):
        raise HTTPException(422, "the rate is a percentage from 0 to 100") from None
    await services.shadow.set_candidate(v.principal, version_id, body)
    return go(request, "/ui/versions")
