"""Runs: the live list (filters, paging, start a run) and a run's page (the five steps as a live
timeline, outputs, artifacts, intents, costs; cancel, raise the budget, approve or deny a tool
call that waits for a person).

Pages call the same services as the API with the viewer's principal, so a page shows and does
exactly what the same key could through the API — the services check the scope. A run's page
follows the run's event stream (`/ui/runs/{id}/events`, the API's stream with the session's key;
`static/live.js`) and reloads its live fragment when something happened; a browser without
EventSource polls the fragment every second instead. A finished run's fragment no longer asks
for updates, so the page stops by itself. The list of runs polls its rows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from dashboard import render
from dashboard.pages import page_scope
from dashboard.sessions import Viewer, check_csrf, viewer
from dashboard.web import confirm, go, page, refusal
from records.statuses import AGENTS, TERMINAL, RunStatus
from services import Services, ServicesDep
from services.events import Subscription, resume_after
from services.models import ApprovalIn, BudgetRaiseIn, RunCreate
from services.run_views import RunQuery

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(page_scope)])
ViewerDep = Annotated[Viewer, Depends(viewer)]
PAGE = 25
STATUSES = [s.value for s in RunStatus]
Filter = Annotated[str | None, Query(max_length=200)]


@dataclass
class RunFilters:
    """The list's filters and page, from the query string (the page and its polled rows)."""

    status: Filter = None
    version: Filter = None
    key: Filter = None
    q: Filter = None
    page_no: Annotated[int, Query(alias="page", ge=1, le=10_000)] = 1

    def shown(self) -> dict[str, str]:
        return {"status": self.status or "", "version": self.version or "",
                "key": self.key or "", "q": self.q or ""}  # fmt: skip

    def query(self) -> RunQuery:
        return RunQuery(
            status=RunStatus(self.status) if self.status in STATUSES else None,
            started_by=self.key or None, version=self.version or None, text=self.q or None,
            limit=PAGE, offset=(self.page_no - 1) * PAGE,
        )  # fmt: skip


FiltersDep = Annotated[RunFilters, Depends()]


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request, v: ViewerDep, services: ServicesDep, f: FiltersDep
) -> HTMLResponse:
    listing = await services.runs.listing(v.principal, f.query())
    filters = f.shown()
    return await page(
        request, "runs.html", v, listing=listing, filters=filters, page_no=f.page_no,
        pages=max(1, -(-listing.total // PAGE)), statuses=STATUSES, query=json.dumps(filters),
    )  # fmt: skip


@router.get("/runs/rows", response_class=HTMLResponse)
async def runs_rows(
    request: Request, v: ViewerDep, services: ServicesDep, f: FiltersDep
) -> HTMLResponse:
    """The list's rows alone (polled every few seconds)."""
    listing = await services.runs.listing(v.principal, f.query())
    return await page(request, "_run_rows.html", v, listing=listing)


@router.post("/runs")
async def start_run(
    request: Request, v: ViewerDep, services: ServicesDep,
    query: Annotated[str, Form(max_length=8000)] = "",
    budget_usd: Annotated[str, Form(max_length=40)] = "",
    dry_run: Annotated[str | None, Form()] = None,
    csrf: Annotated[str | None, Form()] = None,
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    try:
        body = RunCreate(query=query, budget_usd=budget_usd or None, dry_run=dry_run == "on")  # type: ignore[arg-type]
        accepted = await services.runs.start(v.principal, body)
    except (HTTPException, RequestValidationError, ValidationError) as exc:
        listing = await services.runs.listing(v.principal, RunFilters().query())
        return await page(
            request, "runs.html", v, status_code=getattr(exc, "status_code", 422),
            listing=listing, filters={}, page_no=1, pages=1, statuses=STATUSES,
            query="{}", error=f"The run was not started: {refusal(exc)}",
            form={"query": query, "budget_usd": budget_usd, "dry_run": dry_run == "on"},
        )  # fmt: skip
    return go(request, f"/ui/runs/{accepted.run_id}")


# The Coder's files shown inline on a run's page (each highlighted), at most.
INLINE_FILES, INLINE_BYTES = 8, 64_000


def _head(path: Path) -> str:
    return path.read_bytes()[:INLINE_BYTES].decode("utf-8", errors="replace")


async def _files(services: Services, v: Viewer, run: Any) -> list[dict[str, Any]]:
    """The Coder's files as code (the dry run's: what it would have written), highlighted off
    the event loop; the artifact viewer has the rest."""
    found: list[tuple[str, str, bool]] = []
    if run.artifacts:
        for artifact in run.artifacts[:INLINE_FILES]:
            where = await services.runs.artifact_file(v.principal, run.run_id, artifact.path)
            text = await run_in_threadpool(_head, where)
            found.append((artifact.path, text, False))
    else:
        for intent in [i for i in run.intents if i.tool == "write_file"][:INLINE_FILES]:
            detail = await services.runs.intent(v.principal, run.run_id, intent.id)
            named, text = str(detail.args.get("path", "?")), str(detail.args.get("content", ""))
            found.append((named, text[:INLINE_BYTES], True))
    return [
        {"path": path, "size": len(text.encode()), "intended": intended,
         "html": await run_in_threadpool(render.code, text, filename=path)}
        for path, text, intended in found
    ]  # fmt: skip


async def _detail(services: Services, v: Viewer, run_id: str) -> dict[str, Any]:
    run = await services.runs.detail(v.principal, run_id)
    costs = await services.runs.costs(v.principal, run_id)
    steps = {s.agent: s for s in run.steps}
    timeline = [{"agent": a, "step": steps.get(a)} for a in AGENTS]
    return {
        "run": run,
        "timeline": timeline,
        "costs": costs,
        "done": run.status in TERMINAL,
        "tree": render.file_tree([a.path for a in run.artifacts]),
        "files": await _files(services, v, run),
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(
    request: Request, run_id: str, v: ViewerDep, services: ServicesDep
) -> HTMLResponse:
    return await page(request, "run.html", v, **await _detail(services, v, run_id))


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
async def run_live(
    request: Request, run_id: str, v: ViewerDep, services: ServicesDep
) -> HTMLResponse:
    """The part of the run page that changes while it runs (polled until it ends)."""
    return await page(request, "_run_live.html", v, **await _detail(services, v, run_id))


async def _subscription(
    run_id: str, v: ViewerDep, services: ServicesDep,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> Subscription:  # fmt: skip
    # Opened before the stream starts, so a run one may not see is a 404 page, not a stream.
    return await services.events.open(v.principal, run_id, resume_after(None, last_event_id))


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    sub: Annotated[Subscription, Depends(_subscription)],
) -> AsyncIterator[ServerSentEvent]:
    """The run's events, for the page's EventSource (a reconnect resumes after Last-Event-ID)."""
    async for event in sub.sse():
        yield event


@router.post("/runs/{run_id}/approvals/{call_id}")
async def decide_approval(
    request: Request, run_id: str, call_id: str, v: ViewerDep, services: ServicesDep,
    decision: Annotated[str, Form(max_length=10)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str | None, Form()] = None,
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    try:
        body = ApprovalIn(decision=decision, reason=reason.strip() or None)  # type: ignore[arg-type]
    except ValidationError:
        raise HTTPException(422, "the decision must be approve or deny") from None
    await services.approvals.decide(v.principal, run_id, call_id, body)
    return go(request, f"/ui/runs/{run_id}")


@router.post("/runs/{run_id}/cancel")
async def cancel_run(
    request: Request, run_id: str, v: ViewerDep, services: ServicesDep,
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    if confirmed != "yes":
        return await confirm(
            request, v, f"Cancel run {run_id}?",
            "Finished steps and their outputs are kept; the step in flight stops.",
            {}, "Cancel the run", f"/ui/runs/{run_id}",
        )  # fmt: skip
    await services.runs.cancel(v.principal, run_id)
    return go(request, f"/ui/runs/{run_id}")


@router.post("/runs/{run_id}/budget")
async def raise_budget(
    request: Request, run_id: str, v: ViewerDep, services: ServicesDep,
    budget_usd: Annotated[str, Form(max_length=40)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    try:
        body = BudgetRaiseIn(budget_usd=budget_usd)  # type: ignore[arg-type]
    except ValidationError:
        raise HTTPException(422, "the budget must be a plain decimal such as 0.75") from None
    if confirmed != "yes":
        return await confirm(
            request, v, f"Raise the budget of run {run_id} to ${render.money(body.budget_usd)}?",
            "A run paused for its budget resumes; the new budget must be above the current one.",
            {"budget_usd": budget_usd}, "Raise the budget", f"/ui/runs/{run_id}",
        )  # fmt: skip
    await services.runs.raise_budget(v.principal, run_id, body.budget_usd)
    return go(request, f"/ui/runs/{run_id}")


@router.get("/runs/{run_id}/files/{path:path}", response_class=HTMLResponse)
async def view_artifact(
    request: Request, run_id: str, path: str, v: ViewerDep, services: ServicesDep
) -> HTMLResponse:
    target = await services.runs.artifact_file(v.principal, run_id, path)

    def read() -> tuple[str, int, int]:
        raw = target.read_bytes()[:512_000]
        return raw.decode("utf-8", errors="replace"), target.stat().st_size, len(raw)

    text, size, shown = await run_in_threadpool(read)
    return await page(
        request, "artifact.html", v, run_id=run_id, path=path, size=size,
        body=await run_in_threadpool(render.code, text, filename=path), truncated=size > shown,
    )  # fmt: skip


@router.get("/runs/{run_id}/download/{path:path}")
async def download_artifact(
    run_id: str, path: str, v: ViewerDep, services: ServicesDep
) -> FileResponse:
    target = await services.runs.artifact_file(v.principal, run_id, path)
    # Always a download: an agent-written .html must never render in the dashboard's origin.
    return FileResponse(target, filename=Path(path).name, media_type="application/octet-stream")


@router.get("/runs/{run_id}/intents/{intent_id}", response_class=HTMLResponse)
async def view_intent(
    request: Request, run_id: str, intent_id: int, v: ViewerDep, services: ServicesDep
) -> HTMLResponse:
    found = await services.runs.intent(v.principal, run_id, intent_id)
    args = dict(found.args)
    content = str(args.pop("content", ""))
    body = None
    if content:
        body = await run_in_threadpool(render.code, content, filename=str(args.get("path", "")))
    return await page(request, "intent.html", v, run_id=run_id, intent=found, args=args, body=body)
