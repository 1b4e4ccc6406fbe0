"""`/runs`: start, read, list and cancel pipeline runs, and serve their artifacts.

Thin by design: handlers write the run row, start/describe/cancel the workflow and read the app
database. They never call an LLM. The workflow id is the run id, so a run can be found in the
Temporal Web UI and with `temporal workflow show -w RUN_ID`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from opentelemetry import trace
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities import store
from api.deps import EngineDep, MetricsDep, SettingsDep, TemporalDep, TracingDep
from api.errors import documented, invalid
from api.schemas import (
    MAX_OFFSET,
    TERMINAL,
    ArtifactOut,
    DivergenceOut,
    IntentDetail,
    IntentOut,
    RunAccepted,
    RunCreate,
    RunLinks,
    RunOut,
    RunPage,
    RunStatus,
    ShadowOut,
    StepOut,
)
from api.security import (
    AUTH_RESPONSES,
    Runner,
    RunReader,
    check_run_limits,
    visible_run,
)
from api.shadow import start_shadow_quietly
from costs import ledger
from crewline.db import Intent, Run, artifacts_of, intents_of, session_scope, steps_of
from crewline.settings import ConfigurationError, Settings
from crewline.telemetry import current_trace_id
from versioning import shadow
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput, StepRetry

router = APIRouter(prefix="/runs", tags=["runs"], responses=AUTH_RESPONSES)

_TEMPORAL_TERMINAL = {
    WorkflowExecutionStatus.FAILED: RunStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED: RunStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: RunStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
}


def _links(settings: Settings, run_id: str, trace_id: str | None = None) -> RunLinks:
    ui = f"http://127.0.0.1:{settings.temporal_ui_port}"
    trace = None
    if trace_id and settings.jaeger_ui_url:
        trace = f"{settings.jaeger_ui_url.rstrip('/')}/trace/{trace_id}"
    return RunLinks(
        self=f"/runs/{run_id}",
        artifacts=f"/runs/{run_id}/artifacts",
        cancel=f"/runs/{run_id}/cancel",
        costs=f"/runs/{run_id}/costs",
        temporal_ui=f"{ui}/namespaces/{settings.temporal_namespace}/workflows/{run_id}",
        trace=trace,
    )


def _run_summary(settings: Settings, run: Run, spent: Decimal | None = None) -> RunOut:
    links = _links(settings, run.run_id, run.trace_id)
    return RunOut.model_validate({**run.model_dump(), "links": links, "spent_usd": spent})


def _artifacts(engine: Engine, run_id: str) -> list[ArtifactOut]:
    return [
        ArtifactOut(
            path=a.path,
            size_bytes=a.size_bytes,
            sha256=a.sha256,
            url=f"/runs/{run_id}/artifacts/{a.path}",
        )
        for a in artifacts_of(engine, run_id)
    ]


def _intent_out(run_id: str, intent: Intent) -> IntentOut:
    assert intent.id is not None
    return IntentOut(
        id=intent.id,
        agent=intent.agent,
        tool=intent.tool,
        summary=intent.summary,
        url=f"/runs/{run_id}/intents/{intent.id}",
    )


def run_detail(settings: Settings, engine: Engine, run: Run) -> RunOut:
    """A run with its steps, artifacts, intents, spend and shadow verdicts."""
    spent = ledger.spent_by_run(engine, [run.run_id]).get(run.run_id, Decimal(0))
    out = _run_summary(settings, run, spent)
    out.steps = [
        StepOut.model_validate(s, from_attributes=True) for s in steps_of(engine, run.run_id)
    ]
    out.artifacts = _artifacts(engine, run.run_id)
    out.intents = [_intent_out(run.run_id, i) for i in intents_of(engine, run.run_id)]
    shadow_run = shadow.shadow_run_of(engine, run.run_id)
    if shadow_run is not None:
        out.shadow = ShadowOut(
            run_id=shadow_run.run_id,
            status=RunStatus(shadow_run.status),
            version=shadow_run.version,
            divergences=[
                DivergenceOut.of(d) for d in shadow.divergences(engine, run_id=run.run_id)
            ],
        )
    return out


def check_budget_cap(settings: Settings, budget: Decimal | None) -> None:
    if budget is not None and budget > settings.max_budget_usd:
        raise invalid(
            ("body", "budget_usd"),
            f"budget_usd {budget} is above the maximum of {settings.max_budget_usd} "
            "(MAX_BUDGET_USD)",
            str(budget),
        )


def _known_key(engine: Engine, idempotency_key: str) -> bool:
    with Session(engine) as session:
        stmt = select(Run.run_id).where(Run.idempotency_key == idempotency_key)
        return session.exec(stmt).first() is not None


def _claim(engine: EngineDep, run: Run) -> Run:
    """Insert the run row, or return the run already holding this idempotency key."""
    try:
        with session_scope(engine) as session:
            session.add(run)
        return run
    except IntegrityError:
        with Session(engine) as session:
            stmt = select(Run).where(Run.idempotency_key == run.idempotency_key)
            existing = session.exec(stmt).first()
        if existing is None:
            raise
        return existing


def _delete(engine: EngineDep, run_id: str) -> None:
    with session_scope(engine) as session:
        row = session.get(Run, run_id)
        if row is not None:
            session.delete(row)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=documented(409, 429, 503),
)
async def create_run(
    body: RunCreate,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    background: BackgroundTasks,
    key: Runner,
    tracing: TracingDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> RunAccepted:
    """Start a run. With an `Idempotency-Key`, a retried request answers the run it started."""
    try:
        provider = settings.provider()
    except ConfigurationError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    check_budget_cap(settings, body.budget_usd)
    if idempotency_key is None or not await run_in_threadpool(_known_key, engine, idempotency_key):
        await run_in_threadpool(check_run_limits, settings, engine, key)
    budget = body.budget_usd or settings.default_budget_usd
    dry_run = body.dry_run or settings.dry_run
    run = Run(
        run_id=f"run-{uuid.uuid4().hex[:16]}",
        query=body.query,
        budget_usd=budget,
        idempotency_key=idempotency_key,
        provider=provider,
        dry_run=dry_run or None,
        key_id=key.key_id,
        trace_id=current_trace_id(),  # this request's trace: the run's spans join it
    )
    claimed = await run_in_threadpool(_claim, engine, run)
    if claimed.run_id != run.run_id:
        if claimed.key_id != key.key_id:
            raise HTTPException(
                status.HTTP_409_CONFLICT, "Idempotency-Key was already used by another API key"
            )
        if (
            claimed.query != body.query
            or claimed.budget_usd != budget
            or bool(claimed.dry_run) != dry_run
        ):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "Idempotency-Key was already used with a different request body",
            )
        return RunAccepted(
            run_id=claimed.run_id,
            status=RunStatus(claimed.status),
            trace_id=claimed.trace_id,
            links=_links(settings, claimed.run_id, claimed.trace_id),
        )
    try:
        await client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(
                run_id=run.run_id,
                query=body.query,
                budget_usd=budget,
                dry_run=dry_run,
                on_budget_exhausted=settings.on_budget_exhausted,
                retry=StepRetry(
                    max_attempts=settings.llm_max_attempts, timeout_s=settings.llm_step_timeout_s
                ),
            ),
            id=run.run_id,
            task_queue=settings.task_queue,
            static_summary=f"crewline run: {body.query[:120]}",
        )
    except (RPCError, RuntimeError) as exc:
        # Nothing half-written: without a workflow, the row would be a run that never runs.
        await run_in_threadpool(_delete, engine, run.run_id)
        why = exc.status.name if isinstance(exc, RPCError) else "unreachable"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"could not start the run: Temporal at {settings.temporal_address} is {why}; "
            "is the server up? (`make up` starts the embedded one)",
        ) from None
    # After the response is sent: a shadow never touches the primary's latency or result.
    background.add_task(
        start_shadow_quietly, client, settings, engine, run, tracing=tracing, metrics=metrics,
        primary_span=trace.get_current_span().get_span_context(),
    )  # fmt: skip
    return RunAccepted(
        run_id=run.run_id,
        status=RunStatus.QUEUED,
        trace_id=run.trace_id,
        links=_links(settings, run.run_id, run.trace_id),
    )


@router.get("", response_model=RunPage)
def list_runs(
    settings: SettingsDep,
    engine: EngineDep,
    key: RunReader,
    status_filter: Annotated[RunStatus | None, Query(alias="status")] = None,
    started_by: Annotated[
        str | None, Query(alias="key", max_length=32, description="only runs this key id started")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    shadows: Annotated[bool, Query(description="include shadow runs")] = False,
    version: Annotated[str | None, Query(max_length=64, description="ran on this version")] = None,
    text: Annotated[
        str | None, Query(alias="q", max_length=200, description="words in the query")
    ] = None,
) -> RunPage:
    """Newest first, with each run's spend. A `run`-scoped key lists only the runs it started."""
    filters: list[Any] = []
    if not shadows:
        filters.append(col(Run.shadow_of).is_(None))
    if status_filter is not None:
        filters.append(Run.status == status_filter.value)
    if version:
        filters.append(Run.version == version)
    if text:
        filters.append(col(Run.query).contains(text, autoescape=True))
    for only in {key.runs_of, started_by} - {None}:
        filters.append(Run.key_id == only)
    with Session(engine) as session:
        stmt = select(Run).where(*filters)
        total = session.exec(select(func.count()).select_from(Run).where(*filters)).one()
        rows = session.exec(
            stmt.order_by(col(Run.created_at).desc()).offset(offset).limit(limit)
        ).all()
    spent = ledger.spent_by_run(engine, [r.run_id for r in rows])
    items = [_run_summary(settings, r, spent.get(r.run_id, Decimal(0))) for r in rows]
    return RunPage(items=items, total=int(total), limit=limit, offset=offset)


async def _reconcile(client: TemporalDep, engine: EngineDep, run: Run) -> Run:
    """If Temporal ended the workflow without the run row knowing (terminated from the CLI,
    timed out), report what Temporal says instead of RUNNING forever."""
    if RunStatus(run.status) in TERMINAL:
        return run
    try:
        desc = await client.get_workflow_handle(run.run_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return run
        raise
    mapped = _TEMPORAL_TERMINAL.get(desc.status) if desc.status else None
    if mapped is not None:
        run.status = mapped.value
        run.error = run.error or f"workflow {desc.status.name.lower()} in Temporal"  # type: ignore[union-attr]
    return run


@router.get("/{run_id}", response_model=RunOut, responses=documented(404))
async def read_run(
    run_id: str, settings: SettingsDep, engine: EngineDep, client: TemporalDep, key: RunReader
) -> RunOut:
    run = await run_in_threadpool(visible_run, engine, key, run_id)
    # Temporal down: the database view is still worth showing.
    with contextlib.suppress(RPCError, RuntimeError):
        run = await _reconcile(client, engine, run)
    return await run_in_threadpool(run_detail, settings, engine, run)


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=documented(404, 409, 503),
)
async def cancel_run(
    run_id: str, engine: EngineDep, client: TemporalDep, key: Runner
) -> dict[str, str]:
    run = await run_in_threadpool(visible_run, engine, key, run_id)
    if RunStatus(run.status) in TERMINAL:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"run {run_id} already ended with status {run.status}"
        )
    # Who cancelled, written first: the worker adds where the run stopped when it records
    # CANCELLED (and a refused cancel puts the row back as it was).
    await run_in_threadpool(
        store.update_run, engine, run_id, error=f"cancelled by {key.name} ({key.key_id})"
    )
    try:
        await client.get_workflow_handle(run_id).cancel()
    except (RPCError, RuntimeError) as exc:
        await run_in_threadpool(store.update_run, engine, run_id, error=run.error)
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id} has no workflow") from None
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "Temporal is unreachable; try again"
        ) from None
    return {"run_id": run_id, "status": "CANCELLING"}


@router.get("/{run_id}/intents/{intent_id}", response_model=IntentDetail, responses=documented(404))
def read_intent(run_id: str, intent_id: int, engine: EngineDep, key: RunReader) -> IntentDetail:
    """What a dry run's side-effect tool would have done, in full (e.g. a file's content)."""
    visible_run(engine, key, run_id)
    found = next((i for i in intents_of(engine, run_id) if i.id == intent_id), None)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no intent {intent_id}")
    return IntentDetail(**_intent_out(run_id, found).model_dump(), args=json.loads(found.args_json))


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=documented(404))
def list_artifacts(run_id: str, engine: EngineDep, key: RunReader) -> list[ArtifactOut]:
    visible_run(engine, key, run_id)
    return _artifacts(engine, run_id)


@router.get(
    "/{run_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the file's bytes, as an attachment",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **documented(404),
    },
)
def download_artifact(
    run_id: str, path: str, settings: SettingsDep, engine: EngineDep, key: RunReader
) -> FileResponse:
    visible_run(engine, key, run_id)
    known = {a.path for a in artifacts_of(engine, run_id)}
    if path not in known:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no artifact {path!r}")
    root = (settings.artifacts_dir / run_id).resolve()
    target = (root / path).resolve()
    if root not in target.parents or not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"artifact {path!r} is missing on disk")
    # Always a download: an agent-written .html must never render in the API's origin.
    return FileResponse(target, filename=Path(path).name, media_type="application/octet-stream")
