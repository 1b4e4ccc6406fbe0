"""Approvals: a person decides on a tool call that waits for one.

A call waits when its tool is registered `requires_approval`, when the deployment names it
(APPROVAL_REQUIRED_TOOLS) or when the run does (`POST /runs {"approve": [...]}`). The workflow
records the wait (the call's row says PENDING, the run WAITING_FOR_APPROVAL) and holds no worker
while it waits. A decision is checked here against that record — the call exists, waits, and the
key may decide on this run (`run` scope: its own runs; `admin`: any) — then sent to the workflow
as a signal, which Temporal keeps until a worker runs the workflow: it works from any API process
and while no worker is up. The workflow takes the first decision per call and records who, when
and why; the answer says whether that record is already there.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from sqlalchemy import Engine
from temporalio.service import RPCError, RPCStatusCode

from records import approvals as records
from records.events import describe_call
from records.pipeline import ApprovalDecision
from records.statuses import TERMINAL, Approval
from records.tables import ToolCall
from services import Context
from services.access import Principal, require
from services.errors import Conflict, NotFound, Unavailable
from services.models import ApprovalIn, ApprovalSent, ApprovalView
from workflows.pipeline import AgentPipelineWorkflow

log = structlog.get_logger("crewline.approvals")
# How long a decision's answer waits to see the workflow record it (a worker is usually up).
APPLIED_WAIT_S = 3.0
_ARG_CHARS = 2000


def _arguments(args_json: str) -> dict[str, Any]:
    try:
        args = json.loads(args_json)
    except ValueError:
        return {}
    if not isinstance(args, dict):
        return {}
    return {
        k: (v[:_ARG_CHARS] + f"…[{len(v)} characters]" if isinstance(v, str) and
            len(v) > _ARG_CHARS else v)
        for k, v in args.items()
    }  # fmt: skip


def view(call: ToolCall, reason: str | None = None) -> ApprovalView:
    args = _arguments(call.args_json)
    return ApprovalView(
        run_id=call.run_id, call_id=call.call_id, agent=call.agent, tool=call.name,
        call=describe_call(call.name, args), arguments=args, reason=reason,
        state=call.approval or "", asked_at=call.approval_asked_at,
        decided_at=call.approval_decided_at, decided_by=call.approval_by,
        note=call.approval_note,
    )  # fmt: skip


def approvals_of(engine: Engine, calls: list[ToolCall]) -> list[ApprovalView]:
    """The calls of a run that needed a person, with what the agent said as it asked."""
    return [
        view(c, records.stated_reason(engine, c.run_id, c.agent, c.call_id) or None)
        for c in calls
        if c.approval is not None
    ]


class Approvals:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def decide(
        self, principal: Principal, run_id: str, call_id: str, body: ApprovalIn
    ) -> ApprovalSent:
        require(principal, "runs.approve")
        run = await self.ctx.db(_run, run_id)
        if run is None or not principal.may_see(run):
            raise NotFound(f"run {run_id!r} not found")
        call = await self.ctx.db(records.call_of, run_id, call_id)
        if call is None:
            raise NotFound(f"run {run_id} has no tool call {call_id!r}")
        if call.approval is None:
            raise Conflict(f"tool call {call_id} ({call.name}) does not wait for approval")
        if call.approval != Approval.PENDING:
            by = f" by {call.approval_by}" if call.approval_by else ""
            raise Conflict(f"tool call {call_id} was already decided: {call.approval}{by}")
        if run.status in TERMINAL:
            raise Conflict(f"run {run_id} already ended ({run.status})")
        decision = ApprovalDecision(
            call_id=call_id, decision=body.decision, by=f"{principal.name} ({principal.key_id})",
            reason=body.reason,
        )  # fmt: skip
        handle = self.ctx.temporal.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id)
        try:
            await handle.signal(AgentPipelineWorkflow.decide_approval, decision)
        except (RPCError, RuntimeError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                raise Conflict(f"run {run_id} has no workflow running") from None
            raise Unavailable("Temporal is unreachable; try again", retry_after_s=5) from None
        log.info("approval.sent", run_id=run_id, call_id=call_id, decision=body.decision,
                 by=principal.key_id)  # fmt: skip
        state = await self._recorded(run_id, call_id)
        return ApprovalSent(
            run_id=run_id, call_id=call_id, decision=body.decision,
            applied=state != Approval.PENDING, state=state,
        )  # fmt: skip

    async def _recorded(self, run_id: str, call_id: str) -> str:
        """The call's state once the workflow recorded the decision, or PENDING after a
        short wait (no worker up: it is recorded when one is)."""
        deadline = asyncio.get_running_loop().time() + APPLIED_WAIT_S
        while True:
            call = await self.ctx.db(records.call_of, run_id, call_id)
            state = (call.approval if call is not None else None) or Approval.PENDING
            if state != Approval.PENDING or asyncio.get_running_loop().time() > deadline:
                return state
            await asyncio.sleep(0.1)

    async def waiting(self, principal: Principal, run_id: str) -> list[ApprovalView]:
        """The run's calls waiting for a decision now."""
        require(principal, "runs.read")
        run = await self.ctx.db(_run, run_id)
        if run is None or not principal.may_see(run):
            raise NotFound(f"run {run_id!r} not found")
        calls = await self.ctx.db(records.calls_waiting, run_id)
        return await self.ctx.db(approvals_of, calls)


def _run(engine: Engine, run_id: str) -> Any:
    from records.runs import get_run

    return get_run(engine, run_id)
