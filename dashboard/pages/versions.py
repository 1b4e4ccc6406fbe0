"""Versions: the snapshots, which is active and which is the shadow candidate, the prompt diff
between two, the candidate's shadow report with the diverging outputs side by side, the shadow
rate, activate / rollback (admin keys, after a confirmation) and the activation history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from api.deps import EngineDep, SettingsDep, TemporalDep
from api.routes import shadow as shadow_routes
from api.routes import versions as version_routes
from api.routes.shadow import ShadowIn
from api.version_schemas import VERSION_ID_PATTERN, ChangeIn, RollbackIn
from dashboard import render
from dashboard.sessions import Viewer, check_csrf, viewer
from dashboard.web import confirm, go, page

router = APIRouter(prefix="/ui", include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(viewer)]
VersionQ = Annotated[str | None, Query(pattern=VERSION_ID_PATTERN)]


def _admin(v: Viewer) -> None:
    if not v.is_admin:
        raise HTTPException(
            403, f"key {v.principal.key_id} has scope {v.principal.scope.value!r}; this needs admin"
        )


def _report(settings: Any, engine: Any, v: Viewer, version: str) -> dict[str, Any]:
    report = shadow_routes.version_report(
        key=v.principal, version_id=version, settings=settings, engine=engine
    )
    pairs = []
    for agent, part in report.per_agent.items():
        for worst in part.worst:
            before, after = render.word_diff(worst.primary_output, worst.shadow_output)
            pairs.append({"agent": agent, "row": worst, "before": before, "after": after})
    return {"report": report, "pairs": pairs}


@router.get("/versions", response_class=HTMLResponse)
async def versions_page(
    request: Request, v: ViewerDep, settings: SettingsDep, engine: EngineDep, client: TemporalDep,
    a: VersionQ = None, b: VersionQ = None, report: VersionQ = None,
) -> HTMLResponse:  # fmt: skip
    """`report`: whose shadow report to show (default: the current candidate's)."""
    listing = await version_routes.list_versions(
        key=v.principal, settings=settings, engine=engine, client=client
    )
    history = await run_in_threadpool(
        version_routes.version_history, key=v.principal, engine=engine, limit=20
    )
    ids = [item.id for item in listing.items]
    a = a or (ids[1] if len(ids) > 1 else None)
    b = b or (ids[0] if ids else None)
    diff = None
    if a and b and a != b:
        diff = await run_in_threadpool(
            version_routes.diff, key=v.principal, a=a, b=b, settings=settings, engine=engine,
            all_files=False,
        )  # fmt: skip
    which = report if report in ids else listing.candidate
    shown = await run_in_threadpool(_report, settings, engine, v, which) if which else None
    return page(
        request, "versions.html", v, listing=listing, history=history.items, a=a, b=b,
        diff=diff, shadow=shown,
        diff_html={p: render.code(t, "diff") for p, t in (diff.diffs if diff else {}).items()},
    )  # fmt: skip


@router.post("/versions/{version_id}/activate")
async def activate(
    request: Request, version_id: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep, reason: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _admin(v)
    if confirmed != "yes":
        return confirm(
            request, v, f"Make {version_id} the active version?",
            "New runs start on it; runs in flight finish on the version that started them.",
            {"reason": reason}, "Activate", "/ui/versions",
        )  # fmt: skip
    await version_routes.activate(
        key=v.principal, version_id=version_id, settings=settings, engine=engine, client=client,
        body=ChangeIn(reason=reason or "from the dashboard"),
    )  # fmt: skip
    return go(request, "/ui/versions")


@router.post("/versions/rollback")
async def rollback(
    request: Request, v: ViewerDep, settings: SettingsDep, engine: EngineDep, client: TemporalDep,
    from_version: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _admin(v)
    if confirmed != "yes":
        return confirm(
            request, v, f"Roll back from {from_version}?",
            "The version active before it becomes active again (one call, instant while its "
            "worker still runs).", {"from_version": from_version, "reason": reason},
            "Roll back", "/ui/versions",
        )  # fmt: skip
    try:
        body = RollbackIn(from_version=from_version or None, reason=reason or "from the dashboard")
    except ValidationError:
        raise HTTPException(422, "not a version id") from None
    await version_routes.rollback(
        key=v.principal, body=body, settings=settings, engine=engine, client=client
    )
    return go(request, "/ui/versions")


@router.post("/versions/{version_id}/shadow")
async def set_shadow(
    request: Request, version_id: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep, rate: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _admin(v)
    try:
        body = ShadowIn(rate=float(rate) / 100)
    except (ValueError, ValidationError):
        raise HTTPException(422, "the rate is a percentage from 0 to 100") from None
    await shadow_routes.start_shadowing(
        key=v.principal, version_id=version_id, body=body, settings=settings, engine=engine,
        client=client,
    )  # fmt: skip
    return go(request, "/ui/versions")
