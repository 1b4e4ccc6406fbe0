"""Runs: the live list (filters, paging, start a run) and a run's page (the five steps as a live
timeline, outputs, artifacts, intents, costs; cancel and raise the budget).

Pages call the API's own handlers with the viewer's principal, so a page shows and does exactly
what the same key could through the API; the scope checks the API's dependencies make are
repeated here (`_require`), since a direct call skips them. Live parts are fragments the page
polls with htmx while the run is unfinished; a finished run's fragment no longer asks to be
polled, so the page stops updating by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import ValidationError

from api.deps import EngineDep, MetricsDep, SettingsDep, TemporalDep, TracingDep
from api.routes import costs as cost_routes
from api.routes import runs as run_routes
from api.schemas import BudgetRaiseIn, RunCreate, RunStatus
from api.security import visible_run
from crewline.db import artifacts_of, intents_of
from crewline.settings import AGENTS
from crewline.statuses import RUN_STATUSES, TERMINAL_STATUSES
from dashboard import render
from dashboard.sessions import Viewer, check_csrf, viewer
from dashboard.web import confirm, go, page, refusal

router = APIRouter(prefix="/ui", include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(viewer)]
PAGE = 25
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


FiltersDep = Annotated[RunFilters, Depends()]


def _require(viewer: Viewer, *, run: bool = False) -> None:
    if run and not viewer.can_run:
        raise HTTPException(403, f"key {viewer.principal.key_id} has scope 'read'; this needs run")


async def _list(settings: Any, engine: Any, viewer: Viewer, f: RunFilters) -> Any:
    return await run_in_threadpool(
        run_routes.list_runs, settings=settings, engine=engine, key=viewer.principal,
        status_filter=RunStatus(f.status) if f.status in RUN_STATUSES else None,
        started_by=f.key or None, limit=PAGE, offset=(f.page_no - 1) * PAGE, shadows=False,
        version=f.version or None, text=f.q or None,
    )  # fmt: skip


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request, v: ViewerDep, settings: SettingsDep, engine: EngineDep, f: FiltersDep
) -> HTMLResponse:
    listing = await _list(settings, engine, v, f)
    filters = f.shown()
    return page(
        request, "runs.html", v, listing=listing, filters=filters, page_no=f.page_no,
        pages=max(1, -(-listing.total // PAGE)), statuses=RUN_STATUSES,
        query=json.dumps(filters),
    )  # fmt: skip


@router.get("/runs/rows", response_class=HTMLResponse)
async def runs_rows(
    request: Request, v: ViewerDep, settings: SettingsDep, engine: EngineDep, f: FiltersDep
) -> HTMLResponse:
    """The list's rows alone (polled every few seconds)."""
    listing = await _list(settings, engine, v, f)
    return page(request, "_run_rows.html", v, listing=listing)


@router.post("/runs")
async def start_run(
    request: Request, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep, background: BackgroundTasks, tracing: TracingDep, metrics: MetricsDep,
    query: Annotated[str, Form(max_length=8000)] = "",
    budget_usd: Annotated[str, Form(max_length=40)] = "",
    dry_run: Annotated[str | None, Form()] = None,
    csrf: Annotated[str | None, Form()] = None,
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _require(v, run=True)
    try:
        body = RunCreate(query=query, budget_usd=budget_usd or None, dry_run=dry_run == "on")  # type: ignore[arg-type]
        accepted = await run_routes.create_run(
            body=body, settings=settings, engine=engine, client=client, background=background,
            key=v.principal, tracing=tracing, metrics=metrics, idempotency_key=None,
        )  # fmt: skip
    except (HTTPException, RequestValidationError, ValidationError) as exc:
        listing = await _list(settings, engine, v, RunFilters())
        return page(
            request, "runs.html", v, status_code=getattr(exc, "status_code", 422),
            listing=listing, filters={}, page_no=1, pages=1, statuses=RUN_STATUSES,
            query="{}", error=f"The run was not started: {refusal(exc)}",
            form={"query": query, "budget_usd": budget_usd, "dry_run": dry_run == "on"},
        )  # fmt: skip
    return go(request, f"/ui/runs/{accepted.run_id}")


async def _detail(
    request: Request, v: Viewer, run_id: str, settings: Any, engine: Any, client: Any
) -> dict[str, Any]:
    run = await run_routes.read_run(
        run_id=run_id, settings=settings, engine=engine, client=client, key=v.principal
    )
    costs = await run_in_threadpool(
        cost_routes.run_costs, run_id=run_id, engine=engine, key=v.principal
    )
    steps = {s.agent: s for s in run.steps}
    timeline = [{"agent": a, "step": steps.get(a)} for a in AGENTS]
    return {
        "run": run,
        "timeline": timeline,
        "costs": costs,
        "done": run.status in TERMINAL_STATUSES,
        "tree": render.file_tree([a.path for a in run.artifacts]),
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(
    request: Request, run_id: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep,
) -> HTMLResponse:  # fmt: skip
    return page(
        request, "run.html", v, **await _detail(request, v, run_id, settings, engine, client)
    )


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
async def run_live(
    request: Request, run_id: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep,
) -> HTMLResponse:  # fmt: skip
    """The part of the run page that changes while it runs (polled until it ends)."""
    detail = await _detail(request, v, run_id, settings, engine, client)
    return page(request, "_run_live.html", v, **detail)


@router.post("/runs/{run_id}/cancel")
async def cancel_run(
    request: Request, run_id: str, v: ViewerDep, engine: EngineDep, client: TemporalDep,
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _require(v, run=True)
    if confirmed != "yes":
        return confirm(
            request, v, f"Cancel run {run_id}?",
            "Finished steps and their outputs are kept; the step in flight stops.",
            {}, "Cancel the run", f"/ui/runs/{run_id}",
        )  # fmt: skip
    await run_routes.cancel_run(run_id=run_id, engine=engine, client=client, key=v.principal)
    return go(request, f"/ui/runs/{run_id}")


@router.post("/runs/{run_id}/budget")
async def raise_budget(
    request: Request, run_id: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep,
    client: TemporalDep, budget_usd: Annotated[str, Form(max_length=40)] = "",
    csrf: Annotated[str | None, Form()] = None, confirmed: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    check_csrf(v, csrf)
    _require(v, run=True)
    try:
        body = BudgetRaiseIn(budget_usd=budget_usd)  # type: ignore[arg-type]
    except ValidationError:
        raise HTTPException(422, "the budget must be a plain decimal such as 0.75") from None
    if confirmed != "yes":
        return confirm(
            request, v, f"Raise the budget of run {run_id} to ${render.money(body.budget_usd)}?",
            "A run paused for its budget resumes; the new budget must be above the current one.",
            {"budget_usd": budget_usd}, "Raise the budget", f"/ui/runs/{run_id}",
        )  # fmt: skip
    await cost_routes.raise_budget(
        run_id=run_id, body=body, settings=settings, engine=engine, client=client, key=v.principal
    )
    return go(request, f"/ui/runs/{run_id}")


def _artifact_path(settings: Any, engine: Any, v: Viewer, run_id: str, path: str) -> Path:
    visible_run(engine, v.principal, run_id)
    if path not in {a.path for a in artifacts_of(engine, run_id)}:
        raise HTTPException(404, f"run {run_id!r} has no artifact {path!r}")
    root = (settings.artifacts_dir / run_id).resolve()
    target = (root / path).resolve()
    if root not in target.parents or not target.is_file():
        raise HTTPException(404, f"artifact {path!r} is missing on disk")
    return target


@router.get("/runs/{run_id}/files/{path:path}", response_class=HTMLResponse)
async def view_artifact(
    request: Request, run_id: str, path: str, v: ViewerDep, settings: SettingsDep,
    engine: EngineDep,
) -> HTMLResponse:  # fmt: skip
    target = await run_in_threadpool(_artifact_path, settings, engine, v, run_id, path)
    raw = target.read_bytes()[:512_000]
    text = raw.decode("utf-8", errors="replace")
    return page(
        request, "artifact.html", v, run_id=run_id, path=path, size=target.stat().st_size,
        body=render.code(text, filename=path), truncated=target.stat().st_size > len(raw),
    )  # fmt: skip


@router.get("/runs/{run_id}/download/{path:path}")
async def download_artifact(
    run_id: str, path: str, v: ViewerDep, settings: SettingsDep, engine: EngineDep
) -> FileResponse:
    target = await run_in_threadpool(_artifact_path, settings, engine, v, run_id, path)
    # Always a download: an agent-written .html must never render in the dashboard's origin.
    return FileResponse(target, filename=Path(path).name, media_type="application/octet-stream")


@router.get("/runs/{run_id}/intents/{intent_id}", response_class=HTMLResponse)
async def view_intent(
    request: Request, run_id: str, intent_id: int, v: ViewerDep, engine: EngineDep
) -> HTMLResponse:
    await run_in_threadpool(visible_run, engine, v.principal, run_id)
    found = next((i for i in intents_of(engine, run_id) if i.id == intent_id), None)
    if found is None:
        raise HTTPException(404, f"run {run_id!r} has no intent {intent_id}")
    args = json.loads(found.args_json)
    content = str(args.pop("content", ""))
    return page(
        request, "intent.html", v, run_id=run_id, intent=found, args=args,
        body=render.code(content, filename=str(args.get("path", ""))) if content else None,
    )  # fmt: skip
