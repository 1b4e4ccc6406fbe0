"""Costs: per run (`/runs/{id}/costs`), grouped totals (`/costs`), raising a run's budget.

Reads the ledger the activities write; raising a budget goes through the workflow's
`raise_budget` update, so the running workflow — the one place that decides whether the next
step fits — sees it at once, and a run paused for budget resumes.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities import store
from api.deps import EngineDep, SettingsDep, TemporalDep
from api.errors import documented, invalid
from api.routes.runs import check_budget_cap
from api.schemas import (
    MAX_OFFSET,
    TERMINAL,
    BudgetRaiseIn,
    CallOut,
    CostGroup,
    CostReport,
    RunCosts,
    RunStatus,
    Timestamp,
)
from api.security import AUTH_RESPONSES, Runner, RunReader, visible_run
from costs.ledger import PENDING, GroupBy, calls_of, grouped
from crewline.temporal import has_workflow_pollers
from workflows.models import BudgetRaise, BudgetState
from workflows.pipeline import AgentPipelineWorkflow

router = APIRouter(tags=["costs"], responses=AUTH_RESPONSES)
UPDATE_TIMEOUT_S = 15


@router.get("/runs/{run_id}/costs", response_model=RunCosts, responses=documented(404))
def run_costs(run_id: str, engine: EngineDep, key: RunReader) -> RunCosts:
    run = visible_run(engine, key, run_id)
    calls = calls_of(engine, run_id)
    by_agent: dict[str, Decimal] = {}
    reserved = Decimal(0)
    for call in calls:
        if call.state == PENDING:  # in flight: its worst case is held, not yet spent
            reserved += call.cost_usd
            continue
        by_agent[call.agent] = by_agent.get(call.agent, Decimal(0)) + call.cost_usd
    return RunCosts(
        run_id=run_id,
        budget_usd=run.budget_usd,
        total_usd=sum(by_agent.values(), Decimal(0)),
        reserved_usd=reserved,
        by_agent=by_agent,
        calls=[
            CallOut.model_validate(
                {**c.model_dump(), "cost_usd": c.cost_usd, "state": c.state or "settled"}
            )
            for c in calls
        ],
    )


@router.get("/costs", response_model=CostReport)
def cost_report(
    engine: EngineDep,
    key: RunReader,
    group_by: GroupBy = "agent",
    since: Annotated[
        Timestamp | None, Query(description="inclusive, ISO 8601; no zone means UTC")
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="exclusive, ISO 8601; no zone means UTC")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CostReport:
    if since and until and since > until:
        raise invalid(("query", "until"), "until must be after since", str(until))
    items, total, groups = grouped(
        engine, group_by, since=since, until=until, limit=limit, offset=offset,
        key_id=key.runs_of,
    )  # fmt: skip
    return CostReport(
        group_by=group_by,
        total_usd=total,
        groups=groups,
        limit=limit,
        offset=offset,
        items=[CostGroup(**item) for item in items],
    )


@router.post(
    "/runs/{run_id}/budget",
    responses=documented(404, 409, 503, 504),
)
async def raise_budget(
    run_id: str,
    body: BudgetRaiseIn,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    key: Runner,
) -> dict[str, str | None]:
    run = await run_in_threadpool(visible_run, engine, key, run_id)
    check_budget_cap(settings, body.budget_usd)
    if RunStatus(run.status) in TERMINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run_id} already ended ({run.status})")
    handle = client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id)
    try:
        if not await has_workflow_pollers(client, settings):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "no worker is serving runs now, so the run cannot take a new budget; start one "
                "(`crewline worker`, or `crewline up`) and retry",
            )
        update = handle.execute_update(
            AgentPipelineWorkflow.raise_budget,  # type: ignore[arg-type]
            BudgetRaise(budget_usd=body.budget_usd),
        )
        state: BudgetState = await asyncio.wait_for(update, timeout=UPDATE_TIMEOUT_S)  # type: ignore[arg-type]
    except WorkflowUpdateFailedError as exc:  # the workflow's validator said no
        cause = exc.cause
        message = cause.message if isinstance(cause, ApplicationError) else "the run refused it"
        raise HTTPException(status.HTTP_409_CONFLICT, message) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT, "no worker answered; is a worker running?"
        ) from None
    except (RPCError, RuntimeError):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "Temporal is unreachable"
        ) from None
    await run_in_threadpool(store.update_run, engine, run_id, budget_usd=state.budget_usd)
    return {
        "run_id": run_id,
        "budget_usd": str(state.budget_usd),
        "spent_usd": str(state.spent_usd),
    }
