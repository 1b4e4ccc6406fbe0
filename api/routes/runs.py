"""`/runs`: start, read, list and cancel runs, raise a budget, a run's costs, artifacts and
intents, decide on a tool call that waits for approval, follow a run's events (Server-Sent
Events) — thin: each route is its service's call. The workflow id is the run id, so a run
can be found in the Temporal Web UI and with `temporal workflow show -w RUN_ID`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.errors import documented
from api.security import (
    AUTH_RESPONSES,
    CanApprove,
    CanCancelRuns,
    CanRaiseBudgets,
    CanReadRuns,
    CanStartRuns,
)
from records.statuses import RunStatus
from services import ServicesDep
from services.events import Subscription, resume_after
from services.models import (
    MAX_OFFSET,
    ApprovalIn,
    ApprovalSent,
    ApprovalView,
    ArtifactOut,
    BudgetRaiseIn,
    IntentDetail,
    RunAccepted,
    RunCosts,
    RunCreate,
    RunOut,
    RunPage,
)
from services.run_views import RunQuery

router = APIRouter(prefix="/runs", tags=["runs"], responses=AUTH_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=documented(409, 429, 503),
)
async def create_run(
    body: RunCreate,
    services: ServicesDep,
    key: CanStartRuns,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> RunAccepted:
    """Start a run. With an `Idempotency-Key`, a retried request answers the run it started."""
    return await services.runs.start(key, body, idempotency_key)


@router.get("", response_model=RunPage)
async def list_runs(
    services: ServicesDep,
    key: CanReadRuns,
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
    query = RunQuery(
        status=status_filter, started_by=started_by, version=version, text=text,
        shadows=shadows, limit=limit, offset=offset,
    )  # fmt: skip
    return await services.runs.listing(key, query)


@router.get("/{run_id}", response_model=RunOut, responses=documented(404))
async def read_run(run_id: str, services: ServicesDep, key: CanReadRuns) -> RunOut:
    return await services.runs.detail(key, run_id)


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=documented(404, 409, 503),
)
async def cancel_run(run_id: str, services: ServicesDep, key: CanCancelRuns) -> dict[str, str]:
    return await services.runs.cancel(key, run_id)


@router.post("/{run_id}/budget", responses=documented(404, 409, 503, 504))
async def raise_budget(
    run_id: str, body: BudgetRaiseIn, services: ServicesDep, key: CanRaiseBudgets
) -> dict[str, str | None]:
    """Raise the budget of a running or paused run (the workflow decides whether the next step
    fits, so the update goes to it; a run paused for budget resumes)."""
    return await services.runs.raise_budget(key, run_id, body.budget_usd)


@router.get("/{run_id}/costs", response_model=RunCosts, responses=documented(404))
async def run_costs(run_id: str, services: ServicesDep, key: CanReadRuns) -> RunCosts:
    return await services.runs.costs(key, run_id)


@router.get("/{run_id}/intents/{intent_id}", response_model=IntentDetail, responses=documented(404))
async def read_intent(
    run_id: str, intent_id: int, services: ServicesDep, key: CanReadRuns
) -> IntentDetail:
    """What a dry run's side-effect tool would have done, in full (e.g. a file's content)."""
    return await services.runs.intent(key, run_id, intent_id)


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=documented(404))
async def list_artifacts(run_id: str, services: ServicesDep, key: CanReadRuns) -> list[ArtifactOut]:
    return await services.runs.artifacts(key, run_id)


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
async def download_artifact(
    run_id: str, path: str, services: ServicesDep, key: CanReadRuns
) -> FileResponse:
    target = await services.runs.artifact_file(key, run_id, path)
    # Always a download: an agent-written .html must never render in the API's origin.
    return FileResponse(target, filename=Path(path).name, media_type="application/octet-stream")


@router.get("/{run_id}/approvals", response_model=list[ApprovalView], responses=documented(404))
async def waiting_approvals(
    run_id: str, services: ServicesDep, key: CanReadRuns
) -> list[ApprovalView]:
    """The run's tool calls waiting for a person's decision now."""
    return await services.approvals.waiting(key, run_id)


@router.post(
    "/{run_id}/approvals/{call_id}",
    response_model=ApprovalSent,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": ApprovalSent, "description": "decided and recorded by the run"},
               **documented(404, 409, 503)},
)  # fmt: skip
async def decide_approval(
    run_id: str, call_id: str, body: ApprovalIn, response: Response, services: ServicesDep,
    key: CanApprove,
) -> ApprovalSent:  # fmt: skip
    """Approve or deny a tool call that waits for a person (`run` keys: their own runs). 200: the
    run recorded it; 202: it will as soon as a worker picks the run up. A denial's reason goes
    to the agent as the call's result."""
    sent = await services.approvals.decide(key, run_id, call_id, body)
    if sent.applied:
        response.status_code = status.HTTP_200_OK
    return sent


async def _subscription(
    run_id: str,
    services: ServicesDep,
    key: CanReadRuns,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=10**12, description="events numbered above this")
    ] = None,
) -> Subscription:
    return await services.events.open(key, run_id, resume_after(after, last_event_id))


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "Server-Sent Events: `id` the event's number in the run, `event` "
                             "its kind (run, step, turn, tool, approval, checks), `data` JSON"},
        **documented(404),
    },
)  # fmt: skip
async def run_events(
    sub: Annotated[Subscription, Depends(_subscription)],
) -> AsyncIterator[ServerSentEvent]:
    """Follow a run: what happened so far (after `Last-Event-ID` on a reconnect), then each new
    event as it happens, until the run ends. Idle streams get a comment every 15 s."""
    async for event in sub.sse():
        yield event
