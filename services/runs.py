"""Runs: start, read, list, cancel, raise a budget; a run's costs, artifacts and intents (how each
reads is `services.run_views`).

Rules upheld here:
- A run is accepted atomically. The row is written first (with the key's limits checked and the
  run claimed in one transaction, and a sampled run's shadow row beside it), then the workflow
  is started with the run id as its id, which Temporal never reuses. Whatever dies in between,
  the reconciler (`services.reconcile`) starts the workflow of a row that has none, and a retry
  with the same `Idempotency-Key` answers the same run and makes sure it runs.
- The workflow owns a run's status and spend. Nothing here writes a status: cancelling signals
  who asked and cancels the workflow, which records it; raising a budget is the workflow's update,
  which records it. A run whose workflow ended without its row knowing is closed from Temporal's
  record of it (`close_if_ended`), never guessed.
- A run's spend is one number: its settled ledger rows (`records.ledger.spent_by_run`), the same
  in the API, the dashboard, the CLI and `crewline costs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.trace import Link, SpanContext
from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import PinnedVersioningOverride, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from crewline.db import session_scope, utcnow
from crewline.settings import ConfigurationError, Settings
from crewline.telemetry import current_trace_id
from crewline.temporal import has_workflow_pollers
from records import ledger
from records import runs as records
from records.pipeline import BudgetRaise, BudgetState, CancelNote, PipelineInput, StepRetry
from records.statuses import OPEN, TERMINAL, RunStatus
from records.tables import Intent, Run
from services import Context
from services.access import Principal, require
from services.errors import (
    Conflict,
    NoAnswer,
    NotFound,
    TooMany,
    Unavailable,
    cost_tracking_on,
    invalid,
)
from services.keys import ApiKey
from services.models import (
    ArtifactOut,
    IntentDetail,
    RunAccepted,
    RunCosts,
    RunCreate,
    RunOut,
    RunPage,
)
from services.run_views import (
    RunQuery,
    artifacts_out,
    costs_of,
    intent_out,
    links,
    list_runs,
    run_detail,
)
from versioning import deployment, shadow
from workflows.pipeline import AgentPipelineWorkflow

log = structlog.get_logger("crewline.runs")

# A shadow whose candidate never picks it up (worker gone) is not kept open for ever.
SHADOW_RUN_TIMEOUT = timedelta(hours=6)
# Per key: runs started per minute are counted in this window.
LIMIT_WINDOW = timedelta(minutes=1)
# A run in flight has no known end: ask the client to look again after this long.
INFLIGHT_RETRY_S = 5
UPDATE_TIMEOUT_S = 15

_TEMPORAL_ENDED = {
    WorkflowExecutionStatus.FAILED: RunStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED: RunStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: RunStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
    WorkflowExecutionStatus.COMPLETED: RunStatus.COMPLETED,
}


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:16]}"


def shadow_id(run_id: str) -> str:
    return f"{run_id}-shadow"


def check_budget_cap(settings: Settings, budget: Decimal | None) -> None:
    if budget is not None and budget > settings.max_budget_usd:
        raise invalid(
            ("body", "budget_usd"),
            f"budget_usd {budget} is above the maximum of {settings.max_budget_usd} "
            "(MAX_BUDGET_USD)",
            str(budget),
        )


# ---- accepting a run: one transaction -------------------------------------------------------
@dataclass(frozen=True)
class _Claim:
    run: Run  # the new run, or the one already holding the idempotency key
    new: bool


def _check_limits(session: Session, settings: Settings, key_id: str) -> None:
    mine = (Run.key_id == key_id, col(Run.shadow_of).is_(None))
    inflight = session.exec(
        select(func.count()).select_from(Run).where(*mine, col(Run.status).in_(OPEN))
    ).one()
    if inflight >= settings.key_max_inflight:
        raise TooMany(
            f"key {key_id} has {inflight} runs in flight, the most it may "
            f"(KEY_MAX_RUNS_IN_FLIGHT={settings.key_max_inflight}); retry when one ends",
            INFLIGHT_RETRY_S,
        )
    now = utcnow()
    # Two aggregates, not the rows: this runs on every POST /runs.
    recent, oldest = session.exec(
        select(func.count(), func.min(Run.created_at)).where(
            *mine, col(Run.created_at) >= now - LIMIT_WINDOW
        )
    ).one()
    if recent >= settings.key_runs_per_minute and oldest is not None:
        wait = math.ceil((oldest.replace(tzinfo=now.tzinfo) + LIMIT_WINDOW - now).total_seconds())
        raise TooMany(
            f"key {key_id} started {recent} runs in the last minute, the most it may "
            f"(KEY_RUNS_PER_MINUTE={settings.key_runs_per_minute})",
            wait,
        )


def _claim(engine: Engine, settings: Settings, run: Run, shadow_row: Run | None) -> _Claim:
    """Check the key's limits and insert the run (and its shadow) in one transaction, or return
    the run already holding this idempotency key. The key's own row is locked first, so two
    requests of one key cannot both pass the same count (SQLite: the write lock; PostgreSQL: the
    row lock) — requests of different keys do not wait for each other on PostgreSQL."""
    for _ in range(2):  # a concurrent insert of the same idempotency key loses once, then reads
        try:
            with session_scope(engine) as session:
                session.execute(
                    update(ApiKey)
                    .where(col(ApiKey.key_id) == run.key_id)
                    .values(last_used_at=ApiKey.last_used_at)
                )
                if run.idempotency_key is not None:
                    existing = session.exec(
                        select(Run).where(Run.idempotency_key == run.idempotency_key)
                    ).first()
                    if existing is not None:
                        return _Claim(existing, new=False)
                assert run.key_id is not None
                _check_limits(session, settings, run.key_id)
                session.add(run)
                if shadow_row is not None:
                    session.add(shadow_row)
            return _Claim(run, new=True)
        except IntegrityError:
            continue
    raise Conflict("the run could not be recorded (a concurrent request holds its key); retry")


def _same_request(
    existing: Run, key_id: str, query: str, budget: Decimal | None, dry: bool
) -> None:
    if existing.key_id != key_id:
        raise Conflict("Idempotency-Key was already used by another API key")
    if existing.query != query or existing.budget_usd != budget or bool(existing.dry_run) != dry:
        raise Conflict("Idempotency-Key was already used with a different request body")


def _delete_queued(engine: Engine, run_ids: list[str]) -> None:
    with session_scope(engine) as session:
        for run_id in run_ids:
            row = session.get(Run, run_id)
            if row is not None and row.status == RunStatus.QUEUED:
                session.delete(row)


# ---- the workflow of a run row ------------------------------------------------------------------
async def start_workflow_for(ctx: Context, run: Run) -> bool:
    """Start the workflow of this run row; False if it already exists (started before: a retry,
    the reconciler, another API process). Temporal never reuses a run's id, so a run runs once."""
    settings = ctx.settings
    budget_rule = "stop" if run.shadow_of else settings.on_budget_exhausted
    inp = PipelineInput(
        run_id=run.run_id,
        query=run.query,
        budget_usd=run.budget_usd,
        dry_run=bool(run.dry_run),
        on_budget_exhausted=budget_rule,  # type: ignore[arg-type]
        retry=StepRetry(
            max_attempts=settings.llm_max_attempts, timeout_s=settings.llm_step_timeout_s
        ),
        shadow_of=run.shadow_of,
        max_turns=settings.max_turns or None,
        check_rounds=settings.check_rounds,
        approve=json.loads(run.approve_json) if run.approve_json else [],
        approval_timeout_s=settings.approval_timeout_s,
    )
    extra: dict[str, Any] = {}
    if run.shadow_of is not None:
        assert run.version is not None
        extra = {
            "execution_timeout": SHADOW_RUN_TIMEOUT,
            "versioning_override": PinnedVersioningOverride(
                deployment.deployment_version(settings, run.version)
            ),
            "static_summary": f"shadow of {run.shadow_of} on {run.version}",
        }
    else:
        extra = {"static_summary": f"crewline run: {run.query[:120]}"}
    try:
        await ctx.temporal.start_workflow(
            AgentPipelineWorkflow.run,
            inp,
            id=run.run_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            **extra,
        )
    except WorkflowAlreadyStartedError:
        return False
    if run.shadow_of is not None:
        ctx.metrics.shadow_runs.labels(run.version).inc()
        log.info(
            "shadow.started", run_id=run.shadow_of, shadow_run_id=run.run_id, version=run.version
        )
    return True


def _failure_text(exc: BaseException) -> str:
    cause: BaseException | None = exc
    message = str(exc)
    while cause is not None:
        if isinstance(cause, ApplicationError) and str(cause):
            message = str(cause)
        cause = cause.__cause__
    return message


async def close_if_ended(ctx: Context, run: Run) -> Run:
    """If Temporal says the run's workflow has ended while its row still says it is going (the
    workflow's last write failed, a worker or the database was down, someone terminated it),
    close the row from Temporal's record and settle what its calls still hold. Else the row as
    it is."""
    if run.status in TERMINAL:
        return run
    handle = ctx.temporal.get_workflow_handle(run.run_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return run
        raise
    ended = _TEMPORAL_ENDED.get(desc.status) if desc.status else None
    if ended is None:
        return run
    answer, error = None, None
    status: str = ended
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        status = result.get("status", ended) if isinstance(result, dict) else ended
        answer = result.get("final_answer") if isinstance(result, dict) else None
        error = result.get("error") if isinstance(result, dict) else None
    elif desc.status == WorkflowExecutionStatus.FAILED:
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            error = _failure_text(exc)
    else:
        assert desc.status is not None
        error = f"workflow {desc.status.name.lower()} in Temporal"
    closed = await ctx.db(
        records.close_run, run.run_id, status=status, error=error, final_answer=answer
    )
    lost = await ctx.db(ledger.settle_lost, run_id=run.run_id)
    if closed or lost:
        log.warning(
            "reconcile.run_closed", run_id=run.run_id, status=status, settled_calls=len(lost)
        )
    return await ctx.db(records.get_run, run.run_id) or run


# ---- the service -------------------------------------------------------------------------------
class Runs:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _visible(self, principal: Principal, run_id: str) -> Run:
        """The run, if this key may see it; else the same 404 as for a run that does not exist."""
        run = await self.ctx.db(records.get_run, run_id)
        if run is None or not principal.may_see(run):
            raise NotFound(f"run {run_id!r} not found")  # a long id is cut by ServiceError
        return run

    async def start(
        self, principal: Principal, body: RunCreate, idempotency_key: str | None = None
    ) -> RunAccepted:
        """Accept a run (202): its row, then its workflow. With an `Idempotency-Key`, a retried
        request answers the run it started, and makes sure that run runs."""
        require(principal, "runs.start")
        settings = self.ctx.settings
        try:
            provider = settings.provider()
        except ConfigurationError as exc:
            raise Unavailable(str(exc)) from None
        check_budget_cap(settings, body.budget_usd)
        if body.budget_usd is not None:
            cost_tracking_on(settings, "a budget")
        # Without prices no budget can be enforced: such a run has none (it says so: budget null).
        budget = (
            (body.budget_usd or settings.default_budget_usd)
            if settings.cost_tracking_enabled
            else None
        )
        dry_run = body.dry_run or settings.dry_run
        approve = sorted(set(body.approve))
        run = Run(
            run_id=new_run_id(), query=body.query, budget_usd=budget,
            idempotency_key=idempotency_key, provider=provider, dry_run=dry_run or None,
            key_id=principal.key_id, trace_id=current_trace_id(),
            approve_json=json.dumps(approve) if approve else None,
        )  # fmt: skip
        shadow_row = await self._shadow_row(run)
        claim = await self.ctx.db(_claim, settings, run, shadow_row)
        if not claim.new:
            _same_request(claim.run, principal.key_id, body.query, budget, dry_run)
            with contextlib.suppress(RPCError, RuntimeError):  # else the reconciler will
                await self._ensure_started(claim.run)
            return self._accepted(claim.run)
        await self._start_or_undo(run, shadow_row)
        if shadow_row is not None:
            # After the primary's start, off its path: a shadow never delays or fails it. If
            # this process dies first, the reconciler starts the shadow's row.
            primary_span = trace.get_current_span().get_span_context()
            self.ctx.detach(self.start_shadow(shadow_row, primary_span))
        return self._accepted(run)

    def _accepted(self, run: Run) -> RunAccepted:
        return RunAccepted(
            run_id=run.run_id,
            status=RunStatus(run.status),
            trace_id=run.trace_id,
            links=links(self.ctx.settings, run.run_id, run.trace_id),
        )

    async def _shadow_row(self, primary: Run) -> Run | None:
        """The shadow run of a sampled run (written with it), or None."""
        if not self.ctx.settings.versioning_enabled:
            return None
        decision = await self.ctx.db(shadow.decide, self.ctx.settings, primary.run_id)
        if not decision.shadow or decision.candidate is None:
            if decision.why_not and decision.why_not.startswith("sampling paused"):
                log.warning("shadow.paused", run_id=primary.run_id, reason=decision.why_not)
            return None
        return Run(
            run_id=shadow_id(primary.run_id), query=primary.query,
            budget_usd=decision.budget_usd, provider=primary.provider, dry_run=True,
            shadow_of=primary.run_id, key_id=primary.key_id, version=decision.candidate,
            approve_json=primary.approve_json,
        )  # fmt: skip

    async def _start_or_undo(self, run: Run, shadow_row: Run | None) -> None:
        try:
            await start_workflow_for(self.ctx, run)
        except (RPCError, RuntimeError) as exc:
            unreachable = not isinstance(exc, RPCError) or exc.status == RPCStatusCode.UNAVAILABLE
            if not unreachable:
                # The request may have reached Temporal: the row stays QUEUED, and the
                # reconciler starts its workflow if it does not exist.
                log.warning("run.start_uncertain", run_id=run.run_id, error=str(exc)[:200])
                return
            # Never reached Temporal: nothing runs, so nothing stays behind.
            ids = [run.run_id] + ([shadow_row.run_id] if shadow_row else [])
            await self.ctx.db(_delete_queued, ids)
            raise Unavailable(
                f"could not start the run: Temporal at {self.ctx.settings.temporal_address} is "
                "unreachable; is the server up? (`make up` starts the embedded one)",
                retry_after_s=5,
            ) from None

    async def _ensure_started(self, run: Run) -> None:
        if run.status == RunStatus.QUEUED and await start_workflow_for(self.ctx, run):
            log.warning("run.start_repaired", run_id=run.run_id)

    async def start_shadow(self, row: Run, primary_span: SpanContext | None = None) -> None:
        """Start a shadow's workflow. A shadow is its own trace (a new root, not a child of the
        primary's request), linked to the primary's."""
        tracing = self.ctx.tracing
        links = [Link(primary_span)] if primary_span is not None and primary_span.is_valid else []
        try:
            with tracing.tracer.start_as_current_span(
                "shadow run", context=TraceContext(), links=links,
                attributes={"crewline.run_id": row.run_id, "crewline.shadow": True,
                            "crewline.shadow_of": row.shadow_of or "",
                            "crewline.version": row.version or ""},
            ):  # fmt: skip
                trace_id = current_trace_id()
                if trace_id is not None:
                    await self.ctx.db(records.set_trace_id, row.run_id, trace_id)
                await start_workflow_for(self.ctx, row)
        except Exception as exc:  # a shadow must never surface as the primary's problem
            log.warning("shadow.start_failed", run_id=row.shadow_of, error=repr(exc)[:300])

    async def detail(self, principal: Principal, run_id: str) -> RunOut:
        require(principal, "runs.read")
        run = await self._visible(principal, run_id)
        if run.status not in TERMINAL:
            # Temporal down: the database's view is still worth showing.
            with contextlib.suppress(RPCError, RuntimeError):
                run = await close_if_ended(self.ctx, run)
        return await self.ctx.db(run_detail, self.ctx.settings, run)

    async def listing(self, principal: Principal, query: RunQuery) -> RunPage:
        require(principal, "runs.read")
        return await self.ctx.db(list_runs, self.ctx.settings, principal, query)

    async def cancel(self, principal: Principal, run_id: str) -> dict[str, str]:
        """Ask the run to stop; the workflow records who asked and where it stopped."""
        require(principal, "runs.cancel")
        run = await self._visible(principal, run_id)
        if run.status in TERMINAL:
            raise Conflict(f"run {run_id} already ended with status {run.status}")
        handle = self.ctx.temporal.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id)
        try:
            await self._ensure_started(run)  # a run whose start was lost can still be cancelled
            await handle.signal(
                AgentPipelineWorkflow.note_cancel,
                CancelNote(by=f"{principal.name} ({principal.key_id})"),
            )
            await handle.cancel()
        except (RPCError, RuntimeError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                raise Conflict(f"run {run_id} has no workflow") from None
            raise Unavailable("Temporal is unreachable; try again", retry_after_s=5) from None
        return {"run_id": run_id, "status": "CANCELLING"}

    async def raise_budget(
        self, principal: Principal, run_id: str, budget_usd: Decimal
    ) -> dict[str, str | None]:
        """Give a running or paused run more room (the workflow's update; it records it)."""
        require(principal, "runs.budget")
        run = await self._visible(principal, run_id)
        check_budget_cap(self.ctx.settings, budget_usd)
        cost_tracking_on(self.ctx.settings, "raising a budget")
        if run.status in TERMINAL:
            raise Conflict(f"run {run_id} already ended ({run.status})")
        client = self.ctx.temporal
        handle = client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id)
        try:
            if not await has_workflow_pollers(client, self.ctx.settings):
                raise Conflict(
                    "no worker is serving runs now, so the run cannot take a new budget; start "
                    "one (`crewline worker`, or `crewline up`) and retry"
                )
            update_call = handle.execute_update(
                AgentPipelineWorkflow.raise_budget, BudgetRaise(budget_usd=budget_usd)
            )
            state: BudgetState = await asyncio.wait_for(update_call, timeout=UPDATE_TIMEOUT_S)  # type: ignore[arg-type]
        except WorkflowUpdateFailedError as exc:  # the workflow's validator said no
            cause = exc.cause
            message = cause.message if isinstance(cause, ApplicationError) else "the run refused it"
            raise Conflict(message) from None
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise NoAnswer("no worker answered; is a worker running?") from None
        except (RPCError, RuntimeError):
            raise Unavailable("Temporal is unreachable", retry_after_s=5) from None
        return {
            "run_id": run_id,
            "budget_usd": str(state.budget_usd),
            "spent_usd": str(state.spent_usd),
        }

    async def costs(self, principal: Principal, run_id: str) -> RunCosts:
        require(principal, "runs.read")
        run = await self._visible(principal, run_id)
        return await self.ctx.db(costs_of, run)

    async def artifacts(self, principal: Principal, run_id: str) -> list[ArtifactOut]:
        require(principal, "runs.read")
        await self._visible(principal, run_id)
        return await self.ctx.db(artifacts_out, run_id)

    async def artifact_file(self, principal: Principal, run_id: str, path: str) -> Path:
        """Where an artifact's bytes are on disk (only one the run recorded, inside its
        directory)."""
        require(principal, "runs.read")
        await self._visible(principal, run_id)
        known = {a.path for a in await self.ctx.db(records.artifacts_of, run_id)}
        shown = path if len(path) <= 80 else path[:80] + "…"
        if path not in known:
            raise NotFound(f"run {run_id!r} has no artifact {shown!r}")
        root = (self.ctx.settings.artifacts_dir / run_id).resolve()
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            raise NotFound(f"artifact {shown!r} is missing on disk")
        return target

    async def intent(self, principal: Principal, run_id: str, intent_id: int) -> IntentDetail:
        """What a dry run's side-effect tool would have done, in full."""
        require(principal, "runs.read")
        await self._visible(principal, run_id)
        rows = await self.ctx.db(records.intents_of, run_id)
        found = next((i for i in rows if i.id == intent_id), None)
        if found is None:
            raise NotFound(f"run {run_id!r} has no intent {intent_id}")
        return IntentDetail(
            **intent_out(run_id, found).model_dump(), args=json.loads(found.args_json)
        )

    async def intents(self, principal: Principal, run_id: str) -> list[Intent]:
        require(principal, "runs.read")
        await self._visible(principal, run_id)
        return await self.ctx.db(records.intents_of, run_id)
