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

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.agents import AgentActivities, AgentInput, AgentResult, RunUpdate

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
    non_retryable_error_types=["LLMAuthError", "LLMBadRequest", "ConfigurationError"],
)
BOOKKEEPING_START_TO_CLOSE = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=20)


class StepRetry(BaseModel):
    """Per-run override of the step retry budget (from settings, via the API)."""

    max_attempts: int
    timeout_s: float


class PipelineInput(BaseModel):
    run_id: str
    query: str
    budget_usd: Decimal | None = None
    dry_run: bool = False
    retry: StepRetry | None = None


class StepProgress(BaseModel):
    agent: str
    status: str = "PENDING"
    output: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempt: int | None = None
    error: str | None = None


class Progress(BaseModel):
    run_id: str
    status: str
    current_step: str | None
    steps: list[StepProgress]
    final_answer: str | None = None
    error: str | None = None


class PipelineResult(BaseModel):
    run_id: str
    status: str
    final_answer: str
    steps: list[AgentResult]
    artifacts: list[str]
    scripted: bool


def _failure_message(err: BaseException) -> str:
    """The innermost useful message of an activity failure chain."""
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError) and str(cause):
            message = str(cause)
        cause = cause.__cause__
    return message


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

    @workflow.query(name="progress")
    def progress(self) -> Progress:
        return Progress(
            run_id=self._run_id,
            status=self._status,
            current_step=self._current,
            steps=list(self._steps.values()),
            final_answer=self._final_answer,
            error=self._error,
        )

    @workflow.run
    async def run(self, inp: PipelineInput) -> PipelineResult:
        await self._record(RunUpdate(run_id=inp.run_id, status="RUNNING", query=inp.query))
        context: dict[str, str] = {}
        results: list[AgentResult] = []
        try:
            for agent in AGENT_ORDER:
                result = await self._run_step(agent, inp, context)
                results.append(result)
                context[agent] = result.output
                if agent == "coder":
                    context["artifacts"] = "\n".join(f"- {a}" for a in result.artifacts) or "(none)"
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
        await self._record(
            RunUpdate(run_id=inp.run_id, status="COMPLETED", final_answer=self._final_answer)
        )
        return PipelineResult(
            run_id=inp.run_id,
            status="COMPLETED",
            final_answer=self._final_answer,
            steps=results,
            artifacts=next((r.artifacts for r in results if r.agent == "coder"), []),
            scripted=any(r.scripted for r in results),
        )

    async def _run_step(
        self, agent: str, inp: PipelineInput, context: dict[str, str]
    ) -> AgentResult:
        self._current = agent
        step = self._steps[agent]
        step.status = "RUNNING"
        result: AgentResult = await workflow.execute_activity_method(
            _METHODS[agent],
            AgentInput(
                run_id=inp.run_id,
                query=inp.query,
                agent=agent,
                context=dict(context),
                dry_run=inp.dry_run,
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
        step.status = "COMPLETED"
        step.output = result.output
        step.model = result.model
        step.prompt_tokens = result.prompt_tokens
        step.completion_tokens = result.completion_tokens
        step.attempt = result.attempt
        return result

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
        await self._record(
            RunUpdate(run_id=self._run_id, status="CANCELLED", cancelled_agent=self._current)
        )

    async def _record(self, update: RunUpdate) -> None:
        await workflow.execute_activity_method(
            AgentActivities.record_run,
            update,
            start_to_close_timeout=BOOKKEEPING_START_TO_CLOSE,
            retry_policy=BOOKKEEPING_RETRY,
            summary=f"record run status {update.status}",
        )
