"""`AgentPipelineWorkflow`: Researcher → Planner → Executor → Coder → Finalizer, each a durable
tool-calling loop. Deterministic workflow code only: every side effect is an activity.

Each agent's loop lives here: a model turn (an activity), then each tool call it asked for (an
activity each), then the next turn — until the agent answers, reaches its `max_turns`, repeats
an identical tool call `TOOL_REPEAT_LIMIT` times, or the budget says no. Temporal records every
turn and tool call, so after a crash the workflow replays to the one in flight and only that one
runs again; that activity then finds its own checkpoint in the app database when its work was
already done. Outputs travel by reference (rows); the history carries previews.

The names pinned here (workflow, activities, query, update, signal) are stored in histories:
change them only with a versioning plan. Runs recorded before agents had tools take the
`workflows/legacy.py` path (no `agent-loop` patch marker in their history).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities
    from activities.contract import (
        ApprovalAsk,
        ApprovalDone,
        CallRef,
        ChecksInput,
        ChecksResult,
        FinishInput,
        RunUpdate,
        ToolInput,
        TurnInput,
        TurnResult,
    )
    from activities.specs import Output, specs
    from records.pipeline import (
        ApprovalDecision,
        BudgetRaise,
        BudgetState,
        CancelNote,
        PendingApproval,
        PipelineInput,
        PipelineResult,
        Progress,
        StepProgress,
        StepRetry,
        StepSummary,
    )
    from records.statuses import AGENTS, TERMINAL, Approval

__all__ = ["AgentPipelineWorkflow", "PipelineInput", "PipelineResult", "StepRetry"]

# Named policies. LLM calls can be slow, so start-to-close is generous; the heartbeat timeout is
# what detects a dead worker quickly. Retries are bounded: Temporal's default is unlimited.
LLM_START_TO_CLOSE = timedelta(minutes=5)
LLM_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
LLM_STEP_TIMEOUT = timedelta(minutes=30)  # all attempts of one turn, waits included
LLM_RETRY = RetryPolicy(
    # The interval fields are a fallback: our activities set `next_retry_delay` themselves
    # (full-jitter backoff, Retry-After, breaker open period).
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=10,
    non_retryable_error_types=[
        "LLMAuthError",
        "LLMBadRequest",
        "ConfigurationError",
        "BudgetExceeded",
        "ToolCallMissing",
    ],
)
# A tool call: a search, a page, a file (the sandbox's commands bring their own limits).
TOOL_START_TO_CLOSE = timedelta(minutes=5)
TOOL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=["ToolCallMissing"],
)
# A round of acceptance checks: each command has its own sandbox wall time (SANDBOX_WALL_S).
CHECKS_START_TO_CLOSE = timedelta(minutes=15)
# Rounds of acceptance checks the Coder gets (a failed round with rounds left: it repairs), when
# the run does not say (CHECK_ROUNDS).
DEFAULT_CHECK_ROUNDS = 3
BOOKKEEPING_START_TO_CLOSE = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=20)
# Patch id (stored in histories): agents became tool-calling loops (turn and tool activities).
# Runs recorded before it take workflows/legacy.py (tests/histories/pipeline_*.json).
AGENT_LOOP = "agent-loop"
# Patch id: a raised budget is written to the run's row by the workflow (its one writer), no
# longer by the API after the update returned.
BUDGET_RECORDED_BY_WORKFLOW = "budget-recorded-by-workflow"
# Patch id: the round of acceptance checks that ends an agent's loop closes its step (no
# bookkeeping activity after it).
CHECKS_CLOSE_STEP = "checks-close-step"
BUDGET_WARNINGS = (50, 80, 100)  # percent of budget: one structured warning each
# The same tool call (same tool, same arguments) this many times in one agent's loop stops it.
TOOL_REPEAT_LIMIT = 3
# How long a call waits for a person's decision when the run does not say (APPROVAL_TIMEOUT_S).
DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=24)


def _legacy() -> Any:
    """`workflows/legacy.py`, imported by the runs that take it only: the sandbox imports a
    workflow's modules afresh for every run, and its models cost a new run ~2 ms to build."""
    from workflows import legacy

    return legacy


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


class _BudgetStop(Exception):
    def __init__(self, agent: str, reason: str) -> None:
        super().__init__(reason)
        self.agent = agent


def _budget_refusal(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == "BudgetExceeded":
        return cause
    return None


def _failure_message(err: BaseException) -> str:
    """The innermost useful message of an activity failure chain."""
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError) and str(cause):
            message = str(cause)
        cause = cause.__cause__
    # The run has ended: an attempt's "retrying in 1.3s" is no longer true of it.
    message = re.sub(r"(; retrying|, will retry) in [0-9.]+s\b", "", message)
    if isinstance(err, ActivityError) and err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        message += " (its retries are spent)"
    return message


# Versioned workers (workers/main.py) run this workflow PINNED: a run finishes on the version
# (snapshot) that started it, whatever is activated meanwhile; only an explicit move re-pins it.
# (Not set here: Temporal refuses a workflow-level behavior from an unversioned worker.)
@workflow.defn(name="AgentPipelineWorkflow")
class AgentPipelineWorkflow:
    @workflow.init
    def __init__(self, inp: PipelineInput) -> None:
        self._run_id = inp.run_id
        self._status = "RUNNING"
        self._current: str | None = None
        self._steps = {agent: StepProgress(agent=agent) for agent in AGENTS}
        self._final_answer: str | None = None
        self._error: str | None = None
        self._budget: Decimal | None = inp.budget_usd
        self._spent = Decimal(0)
        self._warned: set[int] = set()
        self._cancelled_by: str | None = None
        self._legacy = False
        self._legacy_in_steps = False
        self._summaries: list[StepSummary] = []
        self._artifacts: list[str] = []
        self._scripted = False
        # Calls waiting for a person, and the decisions received (the first per call wins).
        self._pending: dict[str, PendingApproval] = {}
        self._decisions: dict[str, ApprovalDecision] = {}
        self._changes = 0  # status records so far: numbers each one's event

    @workflow.update(name="raise_budget")
    async def raise_budget(self, req: BudgetRaise) -> BudgetState:
        """Give the run more room; a run paused for budget resumes."""
        self._budget = req.budget_usd
        self._warned = {p for p in self._warned if self._spent * 100 >= p * req.budget_usd}
        if workflow.patched(BUDGET_RECORDED_BY_WORKFLOW):
            # The run's row learns its new budget from the workflow, its one writer.
            await self._record(
                RunUpdate(run_id=self._run_id, status=self._status, budget_usd=self._budget)
            )
        return BudgetState(budget_usd=self._budget, spent_usd=self._spent)

    @raise_budget.validator
    def _check_raise(self, req: BudgetRaise) -> None:
        if self._status in TERMINAL:
            raise ValueError(f"run already ended with status {self._status}")
        if self._budget is not None and req.budget_usd <= self._budget:
            raise ValueError(f"new budget must be above the current {self._budget} USD")

    @workflow.signal(name="note_cancel")
    def note_cancel(self, note: CancelNote) -> None:
        """Who asked to cancel: sent just before Temporal's cancel request, recorded with it."""
        self._cancelled_by = note.by

    @workflow.signal(name="decide_approval")
    def decide_approval(self, decision: ApprovalDecision) -> None:
        """A person's decision on a waiting call. A signal, so it is kept even while no worker
        is up; a decision for a call that is not waiting (decided already, or unknown) is
        ignored — the API checks the call's record before it sends one."""
        if decision.call_id in self._pending and decision.call_id not in self._decisions:
            self._decisions[decision.call_id] = decision
        else:
            workflow.logger.info(
                "approval.ignored", extra={"run_id": self._run_id, "call_id": decision.call_id}
            )

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        return Progress(
            run_id=self._run_id,
            status=self._status,
            current_step=self._current,
            steps=list(self._steps.values()),
            final_answer=self._final_answer,
            error=self._error,
            budget_usd=self._budget,
            spent_usd=self._spent,
            approvals=list(self._pending.values()),
        )

    @workflow.run
    async def run(self, inp: PipelineInput) -> PipelineResult:
        self._legacy = not workflow.patched(AGENT_LOOP)
        try:
            if self._legacy:
                await _legacy().run_steps(self, inp)
            else:
                for agent in AGENTS:
                    await self._agent(agent, inp)
        except _BudgetStop as stop:
            return await self._on_budget_stop(stop)
        except (ActivityError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                await self._on_cancel()
                raise
            await self._on_failure(err)
            raise ApplicationError(
                f"{self._current} failed: {self._error}", type="AgentFailed", non_retryable=True
            ) from err
        self._status = "COMPLETED"
        self._current = None
        if self._legacy and not self._legacy_in_steps:
            await self._record(
                RunUpdate(run_id=inp.run_id, status="COMPLETED", final_answer=self._final_answer)
            )
        return self._result()

    def _result(self) -> PipelineResult:
        """The run's result so far: complete, or partial when stopped for budget."""
        return PipelineResult(
            run_id=self._run_id,
            status=self._status,
            final_answer=self._final_answer or "",
            steps=self._summaries,
            artifacts=self._artifacts,
            scripted=self._scripted,
            spent_usd=self._spent,
        )

    def _left(self) -> Decimal | None:
        return None if self._budget is None else self._budget - self._spent

    # ---- one agent: its loop -------------------------------------------------------------------
    async def _agent(self, agent: str, inp: PipelineInput) -> None:
        spec = specs()[agent]
        max_turns = min(spec.max_turns, inp.max_turns) if inp.max_turns else spec.max_turns
        rounds = DEFAULT_CHECK_ROUNDS if inp.check_rounds is None else inp.check_rounds
        self._current = agent
        step = self._steps[agent]
        step.status = "RUNNING"
        usage = StepSummary(agent=agent)
        seen: dict[str, int] = {}
        stop: str | None = None
        turn, checked = 0, 0
        while True:
            turn += 1
            if turn > max_turns:
                stop = f"stopped after {max_turns} turns without a final answer (max_turns)"
                break
            result = await self._turn(agent, inp, turn, last=turn == max_turns)
            self._count(usage, result)
            if result.finished:
                return self._finished(agent, usage, result.output)
            stop = await self._run_calls(agent, inp, turn, result.calls, seen)
            if stop or not result.then_finish:
                if stop:
                    break
                continue
            if spec.output == Output.FILES and rounds > 0:
                checked += 1
                verdict = await self._checks(agent, inp, checked, rounds, turn, max_turns)
                if verdict.retry and turn < max_turns:
                    continue  # it was told what failed; its next turn repairs
                if verdict.closed:
                    return self._finished(agent, usage, verdict.output)
            break
        finished = await workflow.execute_local_activity_method(
            AgentActivities.finish,
            FinishInput(
                run_id=inp.run_id, agent=agent, stop_reason=stop,
                run_status="COMPLETED" if agent == AGENTS[-1] else None,
            ),
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"{agent}: {stop or 'close the step'}",
        )  # fmt: skip
        if stop:
            workflow.logger.warning("agent.stopped", extra={"run_id": inp.run_id, "agent": agent,
                                                             "reason": stop})  # fmt: skip
        self._finished(agent, usage, finished.output)

    async def _run_calls(
        self, agent: str, inp: PipelineInput, turn: int, calls: list[CallRef],
        seen: dict[str, int],
    ) -> str | None:  # fmt: skip
        """Run a turn's tool calls in order; why the loop must stop, if it must."""
        for call in calls:
            seen[call.fingerprint] = seen.get(call.fingerprint, 0) + 1
            times = seen[call.fingerprint]
            if times >= TOOL_REPEAT_LIMIT and not call.call_id.startswith("file-"):
                return f"stopped: it made the same call ({call.summary}) {times} times"
            decision: ApprovalDone | None = None
            if call.requires_approval or call.name in inp.approve:
                decision = (
                    ApprovalDone(run_id=inp.run_id, agent=agent, call_id=call.call_id,
                                 tool=call.name, state=Approval.WOULD_ASK, by="shadow run")
                    if inp.shadow_of is not None else await self._ask(agent, inp, call)
                )  # fmt: skip
            await self._tool(agent, inp, turn, call, decision)
        return None

    async def _ask(self, agent: str, inp: PipelineInput, call: CallRef) -> ApprovalDone:
        """Wait — durably: no worker slot held, one timer — for a person's decision on this
        call; past the deadline it is denied ("approval timed out"). Cancelling the run while
        it waits cancels the wait (and the call's approval, recorded with the cancel)."""
        timeout = (
            timedelta(seconds=inp.approval_timeout_s) if inp.approval_timeout_s
            else DEFAULT_APPROVAL_TIMEOUT
        )  # fmt: skip
        asked = workflow.now()
        pending = PendingApproval(
            call_id=call.call_id, agent=agent, tool=call.name, summary=call.summary,
            asked_at=asked.isoformat(), deadline=(asked + timeout).isoformat(),
        )  # fmt: skip
        self._pending[call.call_id] = pending
        self._status = "WAITING_FOR_APPROVAL"
        self._steps[agent].status = "WAITING_FOR_APPROVAL"
        await workflow.execute_local_activity_method(
            AgentActivities.approval_asked,
            ApprovalAsk(
                run_id=inp.run_id, agent=agent, call_id=call.call_id, tool=call.name,
                summary=call.summary, deadline=pending.deadline,
            ),
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"{agent}: ask approval for {call.summary}"[:200],
        )  # fmt: skip
        workflow.logger.info("approval.waiting", extra={"run_id": inp.run_id, "agent": agent,
                                                         "call_id": call.call_id})  # fmt: skip
        try:
            await workflow.wait_condition(lambda: call.call_id in self._decisions, timeout=timeout)
            got = self._decisions[call.call_id]
            state = Approval.APPROVED if got.decision == "approve" else Approval.DENIED
            done = ApprovalDone(
                run_id=inp.run_id, agent=agent, call_id=call.call_id, tool=call.name,
                state=state, by=got.by, note=got.reason,
            )  # fmt: skip
        except TimeoutError:
            done = ApprovalDone(
                run_id=inp.run_id, agent=agent, call_id=call.call_id, tool=call.name,
                state=Approval.TIMED_OUT, by="crewline",
                note=f"approval timed out after {_duration(timeout)}",
            )  # fmt: skip
        del self._pending[call.call_id]
        self._status = "RUNNING"
        self._steps[agent].status = "RUNNING"
        await workflow.execute_local_activity_method(
            AgentActivities.approval_decided,
            done,
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"{agent}: {call.summary} {done.state.lower()} by {done.by}"[:200],
        )  # fmt: skip
        return done

    async def _checks(
        self, agent: str, inp: PipelineInput, round_no: int, rounds: int, turn: int,
        max_turns: int,
    ) -> ChecksResult:  # fmt: skip
        ask = ChecksInput(
            run_id=inp.run_id, agent=agent, round=round_no, rounds=rounds, turn=turn,
            dry_run=inp.dry_run,
        )  # fmt: skip
        if workflow.patched(CHECKS_CLOSE_STEP):
            ask.close, ask.last_turn = True, turn >= max_turns
            ask.run_status = "COMPLETED" if agent == AGENTS[-1] else None
        return await workflow.execute_activity_method(  # type: ignore[no-any-return]
            AgentActivities.acceptance,
            ask,
            start_to_close_timeout=CHECKS_START_TO_CLOSE,
            heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
            retry_policy=TOOL_RETRY,
            summary=f"{agent}: acceptance checks, round {round_no}",
        )  # fmt: skip

    def _count(self, usage: StepSummary, result: TurnResult) -> None:
        self._spent += result.cost_usd
        self._warn_budget()
        usage.model = result.model or usage.model
        usage.prompt_tokens = (usage.prompt_tokens or 0) + (result.prompt_tokens or 0)
        usage.completion_tokens = (usage.completion_tokens or 0) + (result.completion_tokens or 0)
        usage.attempt = max(usage.attempt, result.attempt)
        usage.cost_usd += result.cost_usd
        self._scripted = self._scripted or result.scripted
        step = self._steps[usage.agent]
        step.model, step.attempt, step.cost_usd = usage.model, usage.attempt, usage.cost_usd
        step.prompt_tokens, step.completion_tokens = usage.prompt_tokens, usage.completion_tokens

    def _finished(self, agent: str, usage: StepSummary, output: str) -> None:
        step = self._steps[agent]
        step.status, step.output = "COMPLETED", output
        self._summaries.append(usage)
        if agent == AGENTS[-1]:
            self._final_answer = output

    async def _turn(self, agent: str, inp: PipelineInput, turn: int, *, last: bool) -> TurnResult:
        """One model turn, within the budget: a refusal stops the run or waits for a raise."""
        first = agent == AGENTS[0] and turn == 1
        while True:
            try:
                return await workflow.execute_activity_method(  # type: ignore[no-any-return]
                    AgentActivities.turn,
                    TurnInput(
                        run_id=inp.run_id, query=inp.query, agent=agent, turn=turn,
                        dry_run=inp.dry_run, budget_left_usd=self._left(),
                        shadow_of=inp.shadow_of, last_turn=last,
                        run_status=(
                            "RUNNING" if first else "COMPLETED" if agent == AGENTS[-1] else None
                        ),
                    ),
                    start_to_close_timeout=LLM_START_TO_CLOSE,
                    schedule_to_close_timeout=(
                        timedelta(seconds=inp.retry.timeout_s) if inp.retry else LLM_STEP_TIMEOUT
                    ),
                    heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
                    retry_policy=(
                        dataclasses.replace(LLM_RETRY, maximum_attempts=inp.retry.max_attempts)
                        if inp.retry else LLM_RETRY
                    ),
                    summary=f"{agent} turn {turn}" + (" (last)" if last and turn > 1 else ""),
                )  # fmt: skip
            except ActivityError as err:
                await self._on_budget_refusal(agent, inp, err)

    async def _tool(
        self, agent: str, inp: PipelineInput, turn: int, call: CallRef,
        approval: ApprovalDone | None = None,
    ) -> None:  # fmt: skip
        await workflow.execute_activity_method(
            AgentActivities.tool,
            ToolInput(
                run_id=inp.run_id, agent=agent, turn=turn, call_id=call.call_id,
                name=call.name, dry_run=inp.dry_run, shadow_of=inp.shadow_of,
                approval=approval.state if approval else None,
                approval_by=approval.by if approval else None,
                approval_note=approval.note if approval else None,
            ),
            start_to_close_timeout=TOOL_START_TO_CLOSE,
            heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
            retry_policy=TOOL_RETRY,
            summary=f"{agent} ▸ {call.summary}"[:200],
        )  # fmt: skip

    async def _on_budget_refusal(self, agent: str, inp: PipelineInput, err: ActivityError) -> None:
        """A step refused for budget: count what its attempts cost, then stop the run or wait
        for a raise (ON_BUDGET_EXHAUSTED). Any other failure is re-raised."""
        refusal = _budget_refusal(err)
        if refusal is None:
            raise err
        # What the refused step's earlier attempts cost is in the refusal's details.
        details = refusal.details[0] if refusal.details else {}
        self._spent += Decimal(str(details.get("step_spent_usd", "0")))
        if inp.on_budget_exhausted != "wait":
            raise _BudgetStop(agent, refusal.message) from err
        await self._wait_for_budget(agent, refusal.message)

    # ---- the run's status ---------------------------------------------------------------------
    async def _wait_for_budget(self, agent: str, reason: str) -> None:
        self._status = "WAITING_FOR_BUDGET"
        self._error = reason
        self._steps[agent].status = "WAITING_FOR_BUDGET"
        await self._record(RunUpdate(run_id=self._run_id, status=self._status, error=reason))
        budget = self._budget
        workflow.logger.warning("budget.paused", extra={"run_id": self._run_id, "agent": agent})
        await workflow.wait_condition(lambda: self._budget != budget)
        self._status, self._error = "RUNNING", None
        self._steps[agent].status = "RUNNING"
        await self._record(
            RunUpdate(run_id=self._run_id, status="RUNNING", budget_usd=self._budget)
        )

    def _warn_budget(self) -> None:
        if not self._budget:
            return
        for percent in BUDGET_WARNINGS:
            if percent not in self._warned and self._spent * 100 >= percent * self._budget:
                self._warned.add(percent)
                workflow.logger.warning(
                    "budget.threshold",
                    extra={
                        "run_id": self._run_id,
                        "percent": percent,
                        "spent_usd": str(self._spent),
                        "budget_usd": str(self._budget),
                    },
                )

    async def _on_budget_stop(self, stop: _BudgetStop) -> PipelineResult:
        self._status = "BUDGET_EXCEEDED"
        self._steps[stop.agent].status = "BUDGET_EXCEEDED"
        self._error = (
            f"stopped before {stop.agent}: spent {self._spent} of {self._budget} USD; {stop}"
        )
        await self._record(RunUpdate(run_id=self._run_id, status=self._status, error=self._error))
        return self._result()

    async def _on_failure(self, err: BaseException) -> None:
        self._error = _failure_message(err)
        self._status = "FAILED"
        if self._current is not None:
            self._steps[self._current].status = "FAILED"
            self._steps[self._current].error = self._error
        await self._record(
            RunUpdate(
                run_id=self._run_id,
                status="FAILED",
                error=f"{self._current} failed: {self._error}",
                failed_agent=self._current,
            )
        )

    async def _on_cancel(self) -> None:
        # Cleanup after a cancel request is allowed: the request is delivered once, and the
        # activity scheduled here runs normally so the DB says CANCELLED, not RUNNING forever.
        self._status = "CANCELLED"
        if self._current is not None:
            self._steps[self._current].status = "CANCELLED"
        by = f"cancelled by {self._cancelled_by}" if self._cancelled_by else None
        await self._record(
            RunUpdate(
                run_id=self._run_id, status="CANCELLED", cancelled_agent=self._current, error=by
            )
        )

    async def _record(self, update: RunUpdate) -> None:
        self._changes += 1
        update.change = self._changes
        summary = f"record run status {update.status}"
        # A local activity runs in the worker that holds the workflow task: no round trip
        # through the server, no extra workflow task. Runs of the old shape recorded before
        # that replay their regular activities (tests/histories/pipeline_*_v1.json).
        if not self._legacy or workflow.patched(_legacy().RECORD_RUN_LOCALLY):
            await workflow.execute_local_activity_method(
                AgentActivities.record_run,
                update,
                start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
                retry_policy=BOOKKEEPING_RETRY,
                summary=summary,
            )
            return
        await workflow.execute_activity_method(
            AgentActivities.record_run,
            update,
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=summary,
        )
