"""Runs recorded before agents had tools: each agent one activity (`researcher`, `planner`, …)
making one model call. Deterministic workflow code only.

Kept so those histories replay (`tests/histories/`) — the pipeline takes this path when its run
has no `agent-loop` patch marker. Their activities are not registered any more: a run of this
shape that is still open is served by the version that started it (runs are pinned), never by a
worker of this code.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from records.pipeline import Compact, PipelineInput, StepSummary
    from records.statuses import AGENTS

if TYPE_CHECKING:
    from workflows.pipeline import AgentPipelineWorkflow

# Patch ids of that shape (stored in its histories).
RECORD_RUN_LOCALLY = "record-run-local-activity"
STATUS_IN_STEPS = "status-in-steps"
STEP_SUMMARIES = {
    "researcher": "researcher: decide on and run a web search, write research notes",
    "planner": "planner: turn the request and research into a step-by-step plan",
    "executor": "executor: validate the plan, write architecture notes",
    "coder": "coder: write the artifacts (files) for the plan",
    "finalizer": "finalizer: write the user-facing answer",
}


class AgentInput(Compact):
    run_id: str
    query: str
    agent: str
    context: dict[str, str] = {}
    dry_run: bool = False
    budget_left_usd: Decimal | None = None
    shadow_of: str | None = None
    run_status: str | None = None


class AgentResult(Compact):
    agent: str
    output: str
    model: str
    provider: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    scripted: bool = False
    attempt: int = 1
    notes: str | None = None
    artifacts: list[str] = []
    intents: list[dict[str, object]] = []
    cost_usd: Decimal = Decimal(0)
    max_tokens_shrunk: bool = False


def summary(result: AgentResult) -> StepSummary:
    return StepSummary(
        agent=result.agent, model=result.model, prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens, attempt=result.attempt,
        cost_usd=result.cost_usd,
    )  # fmt: skip


async def run_steps(wf: AgentPipelineWorkflow, inp: PipelineInput) -> None:
    """The five single-call steps (each finished one's summary goes to `wf._summaries`); the
    run's RUNNING status as that shape recorded it."""
    from workflows.pipeline import (
        LLM_HEARTBEAT_TIMEOUT,
        LLM_RETRY,
        LLM_START_TO_CLOSE,
        LLM_STEP_TIMEOUT,
        RunUpdate,
    )

    wf._legacy_in_steps = workflow.patched(STATUS_IN_STEPS)
    if not wf._legacy_in_steps:
        await wf._record(RunUpdate(run_id=inp.run_id, status="RUNNING", query=inp.query))
    for agent in AGENTS:
        wf._current = agent
        wf._steps[agent].status = "RUNNING"
        while True:
            try:
                result = await workflow.execute_activity(
                    agent,
                    AgentInput(
                        run_id=inp.run_id, query=inp.query, agent=agent, dry_run=inp.dry_run,
                        budget_left_usd=wf._left(), shadow_of=inp.shadow_of,
                        run_status=(
                            {AGENTS[0]: "RUNNING", AGENTS[-1]: "COMPLETED"}.get(agent)
                            if wf._legacy_in_steps else None
                        ),
                    ),
                    result_type=AgentResult,
                    start_to_close_timeout=LLM_START_TO_CLOSE,
                    schedule_to_close_timeout=(
                        timedelta(seconds=inp.retry.timeout_s) if inp.retry else LLM_STEP_TIMEOUT
                    ),
                    heartbeat_timeout=LLM_HEARTBEAT_TIMEOUT,
                    retry_policy=(
                        dataclasses.replace(LLM_RETRY, maximum_attempts=inp.retry.max_attempts)
                        if inp.retry else LLM_RETRY
                    ),
                    summary=STEP_SUMMARIES[agent],
                )  # fmt: skip
                break
            except ActivityError as err:
                await wf._on_budget_refusal(agent, inp, err)
        wf._spent += result.cost_usd
        wf._warn_budget()
        step = wf._steps[agent]
        step.status, step.output, step.model = "COMPLETED", result.output, result.model
        step.prompt_tokens, step.completion_tokens = result.prompt_tokens, result.completion_tokens
        step.attempt, step.cost_usd = result.attempt, result.cost_usd
        wf._summaries.append(summary(result))
        wf._scripted = wf._scripted or result.scripted
        if agent == "coder":
            wf._artifacts = result.artifacts
        if agent == AGENTS[-1]:
            wf._final_answer = result.output
