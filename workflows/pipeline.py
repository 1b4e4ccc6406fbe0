"""`AgentPipelineWorkflow`: Researcher → Planner → Executor → Coder → Finalizer, durably.

Deterministic workflow code only: every side effect is an activity. Temporal records each
activity's result, so after a worker crash the workflow replays to the step it was in and only
that step runs again. The names pinned here (workflow, activities, query) are stored in histories:
change them only with a versioning plan.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from decimal import Decimal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities, AgentInput, AgentResult, RunUpdate
    from records.pipeline import (
        BudgetRaise,
        BudgetState,
        CancelNote,
        PipelineInput,
        PipelineResult,
        Progress,
        StepProgress,
        StepRetry,
        StepSummary,
    )
    from records.statuses import TERMINAL as TERMINAL_STATUSES

__all__ = ["AGENT_ORDER", "AgentPipelineWorkflow", "PipelineInput", "PipelineResult", "StepRetry"]

AGENT_ORDER: tuple[str, ...] = ("researcher", "planner", "executor", "coder", "finalizer")
STEP_SUMMARIES = {
    "researcher": "researcher: decide on and run a web search, write research notes",
    "planner": "planner: turn the request and research into a step-by-step plan",
    "executor": "executor: validate the plan, write architecture notes",
    "coder": "coder: write the artifacts (files) for the plan",
    "finalizer": "finalizer: write the user-facing answer",
}
_METHODS = {
    "researcher": AgentActivities.research,
    "planner": AgentActivities.plan,
    "executor": AgentActivities.execute,
    "coder": AgentActivities.code,
    "finalizer": AgentActivities.finalize,
}

# Named policies. LLM calls can be slow, so start-to-close is generous; the heartbeat timeout is
# what detects a dead worker quickly. Retries are bounded: Temporal's default is unlimited.
LLM_START_TO_CLOSE = timedelta(minutes=5)
LLM_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
LLM_STEP_TIMEOUT = timedelta(minutes=30)  # all attempts of one step, waits included
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
    ],
)
BOOKKEEPING_START_TO_CLOSE = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=20)
# Patch id (stored in histories): run-status writes became local activities. Runs recorded
# before it replay their regular record_run activities; remove the old branch only once no such
# run is open or kept for replay (tests/histories/pipeline_*_v1.json).
RECORD_RUN_LOCALLY = "record-run-local-activity"
# Patch id: a run's RUNNING and COMPLETED statuses ride on its first and last steps' own
# database writes instead of two record_run calls (measured: 7 ms of worker and 5 ms of server
# CPU per run). Other statuses (failed, cancelled, budget) are still recorded by the workflow.
# Runs recorded before it replay their record_run calls (tests/histories/*_v2.json).
STATUS_IN_STEPS = "status-in-steps"
# Patch id: a raised budget is written to the run's row by the workflow (its one writer), no
# longer by the API after the update returned.
BUDGET_RECORDED_BY_WORKFLOW = "budget-recorded-by-workflow"
BUDGET_WARNINGS = (50, 80, 100)  # percent of budget: one structured warning each


class _BudgetStop(Exception):
    def __init__(self, agent: str, reason: str) -> None:
        super().__init__(reason)
        self.agent = agent


def _budget_refusal(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == "BudgetExceeded":
        return cause
    return None


def _summary(result: AgentResult) -> StepSummary:
    return StepSummary(
        agent=result.agent, model=result.model, prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens, attempt=result.attempt,
        cost_usd=result.cost_usd,
    )  # fmt: skip


def _failure_message(err: BaseException) -> str:
    """The innermost useful message of an activity failure chain."""
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError) and str(cause):
            message = str(cause)
        cause = cause.__cause__
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
        self._steps = {agent: StepProgress(agent=agent) for agent in AGENT_ORDER}
        self._final_answer: str | None = None
        self._error: str | None = None
        self._budget: Decimal | None = inp.budget_usd
        self._spent = Decimal(0)
        self._warned: set[int] = set()
        self._in_steps = False
        self._cancelled_by: str | None = None

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

    @workflow.signal(name="note_cancel")
    def note_cancel(self, note: CancelNote) -> None:
        """Who asked to cancel: sent just before Temporal's cancel request, recorded with it."""
        self._cancelled_by = note.by

    @raise_budget.validator
    def _check_raise(self, req: BudgetRaise) -> None:
        if self._status in TERMINAL_STATUSES:
            raise ValueError(f"run already ended with status {self._status}")
        if self._budget is not None and req.budget_usd <= self._budget:
            raise ValueError(f"new budget must be above the current {self._budget} USD")

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
        )

    @workflow.run
    async def run(self, inp: PipelineInput) -> PipelineResult:
        self._in_steps = workflow.patched(STATUS_IN_STEPS)
        if not self._in_steps:
            await self._record(RunUpdate(run_id=inp.run_id, status="RUNNING", query=inp.query))
        results: list[AgentResult] = []
        try:
            # Each step reads the earlier steps' outputs from their rows (activities/store.py):
            # the history carries the answer, not every output again and again.
            for agent in AGENT_ORDER:
                results.append(await self._run_step(agent, inp))
        except _BudgetStop as stop:
            return await self._on_budget_stop(stop, results)
        except (ActivityError, asyncio.CancelledError) as err:
            if is_cancelled_exception(err):
                await self._on_cancel()
                raise
            await self._on_failure(err)
            raise ApplicationError(
                f"{self._current} failed: {self._error}", type="AgentFailed", non_retryable=True
            ) from err
        self._final_answer = results[-1].output
        self._status = "COMPLETED"
        self._current = None
        if not self._in_steps:  # else the finalizer wrote it with its answer
            await self._record(
                RunUpdate(run_id=inp.run_id, status="COMPLETED", final_answer=self._final_answer)
            )
        return self._result(results)

    def _result(self, results: list[AgentResult]) -> PipelineResult:
        """The run's result so far: complete, or partial when stopped for budget."""
        return PipelineResult(
            run_id=self._run_id,
            status=self._status,
            final_answer=self._final_answer or "",
            steps=[_summary(r) for r in results],
            artifacts=next((r.artifacts for r in results if r.agent == "coder"), []),
            scripted=any(r.scripted for r in results),
            spent_usd=self._spent,
        )

    def _left(self) -> Decimal | None:
        return None if self._budget is None else self._budget - self._spent

    async def _run_step(self, agent: str, inp: PipelineInput) -> AgentResult:
        self._current = agent
        step = self._steps[agent]
        step.status = "RUNNING"
        while True:
            try:
                result = await self._execute(agent, inp)
                break
            except ActivityError as err:
                refusal = _budget_refusal(err)
                if refusal is None:
                    raise
                # What the refused step's earlier attempts cost is in the refusal's details.
                details = refusal.details[0] if refusal.details else {}
                self._spent += Decimal(str(details.get("step_spent_usd", "0")))
                if inp.on_budget_exhausted != "wait":
                    raise _BudgetStop(agent, refusal.message) from err
                await self._wait_for_budget(agent, refusal.message)
        self._spent += result.cost_usd
        self._warn_budget()
        step.status = "COMPLETED"
        step.output = result.output
        step.model = result.model
        step.prompt_tokens = result.prompt_tokens
        step.completion_tokens = result.completion_tokens
        step.attempt = result.attempt
        step.cost_usd = result.cost_usd
        return result

    async def _execute(self, agent: str, inp: PipelineInput) -> AgentResult:
        return await workflow.execute_activity_method(  # type: ignore[no-any-return]
            _METHODS[agent],
            AgentInput(
                run_id=inp.run_id,
                query=inp.query,
                agent=agent,
                dry_run=inp.dry_run,
                budget_left_usd=self._left(),
                shadow_of=inp.shadow_of,
                run_status=self._run_status(agent),
            ),
            start_to_close_timeout=LLM_START_TO_CLOSE,
            schedule_to_close_timeout=(
                timedelta(seconds=inp.retry.timeout_s) if inp.retry else LLM_STEP_TIMEOUT
            ),
            heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
            retry_policy=(
                dataclasses.replace(LLM_RETRY, maximum_attempts=inp.retry.max_attempts)
                if inp.retry
                else LLM_RETRY
            ),
            summary=STEP_SUMMARIES[agent],
        )

    def _run_status(self, agent: str) -> str | None:
        """The run status this step writes itself (STATUS_IN_STEPS): the first step RUNNING,
        the last COMPLETED."""
        if not self._in_steps:
            return None
        return {AGENT_ORDER[0]: "RUNNING", AGENT_ORDER[-1]: "COMPLETED"}.get(agent)

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

    async def _on_budget_stop(
        self, stop: _BudgetStop, results: list[AgentResult]
    ) -> PipelineResult:
        self._status = "BUDGET_EXCEEDED"
        self._steps[stop.agent].status = "BUDGET_EXCEEDED"
        self._error = (
            f"stopped before {stop.agent}: spent {self._spent} of {self._budget} USD; {stop}"
        )
        await self._record(RunUpdate(run_id=self._run_id, status=self._status, error=self._error))
        return self._result(results)

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
        summary = f"record run status {update.status}"
        if workflow.patched(RECORD_RUN_LOCALLY):
            # A local activity runs in the worker that holds the workflow task: no round trip
            # through the server, no extra workflow task (see README "Performance").
            await workflow.execute_local_activity_method(
                AgentActivities.record_run,
                update,
                start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
                retry_policy=BOOKKEEPING_RETRY,
                summary=summary,
            )
            return
        # Runs started before RECORD_RUN_LOCALLY replay this branch.
        await workflow.execute_activity_method(
            AgentActivities.record_run,
            update,
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=summary,
        )
