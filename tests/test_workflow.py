"""Workflow logic on the time-skipping test server, with fake activities under the real names."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.agents import AgentInput, AgentResult, RunUpdate
from tests.conftest import assert_eventually
from workflows.pipeline import AGENT_ORDER, AgentPipelineWorkflow, PipelineInput


class FakeAgents:
    """Records what each agent was given; can fail or block one agent."""

    def __init__(self, fail: str | None = None, block: str | None = None) -> None:
        self.calls: list[AgentInput] = []
        self.updates: list[RunUpdate] = []
        self.fail, self.block = fail, block
        self.blocked = asyncio.Event()

    async def _agent(self, inp: AgentInput) -> AgentResult:
        self.calls.append(inp)
        if inp.agent == self.fail:
            raise ApplicationError(
                "GROQ_API_KEY rejected (401)", type="LLMAuthError", non_retryable=True
            )
        if inp.agent == self.block:
            self.blocked.set()
            while True:  # until cancelled; heartbeats deliver the cancel
                activity.heartbeat()
                await asyncio.sleep(0.1)
        artifacts = ["snake.py"] if inp.agent == "coder" else []
        return AgentResult(
            agent=inp.agent,
            output=f"out-{inp.agent}",
            model="m",
            provider="fake",
            artifacts=artifacts,
        )

    def activities(self) -> list[object]:
        def make(name: str) -> object:
            @activity.defn(name=name)
            async def _fn(inp: AgentInput) -> AgentResult:
                return await self._agent(inp)

            return _fn

        @activity.defn(name="record_run")
        async def record_run(update: RunUpdate) -> None:
            self.updates.append(update)

        return [make(name) for name in AGENT_ORDER] + [record_run]


async def _start(env: WorkflowEnvironment, fakes: FakeAgents, query: str = "Build a snake game"):  # type: ignore[no-untyped-def]
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env.client,
        task_queue=queue,
        workflows=[AgentPipelineWorkflow],
        activities=fakes.activities(),
    )  # type: ignore[arg-type]
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    return worker, run_id, queue


async def test_agents_run_in_order_and_pass_references_not_outputs(
    ts_env: WorkflowEnvironment,
) -> None:
    fakes = FakeAgents()
    worker, run_id, queue = await _start(ts_env, fakes)
    async with worker:
        result = await ts_env.client.execute_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=run_id, query="Build a snake game"),
            id=run_id,
            task_queue=queue,
        )
    assert [c.agent for c in fakes.calls] == list(AGENT_ORDER)
    # Earlier outputs are not carried through the history: each step reads them from the step
    # rows (tests/test_integration.py checks what a step's prompt got).
    assert all(c.context == {} for c in fakes.calls)
    assert all(c.query == "Build a snake game" for c in fakes.calls)
    assert result.status == "COMPLETED" and result.final_answer == "out-finalizer"
    assert result.artifacts == ["snake.py"]
    # The happy path's statuses ride on the first and last steps' own writes: no record_run.
    assert fakes.updates == []
    assert [c.run_status for c in fakes.calls] == ["RUNNING", None, None, None, "COMPLETED"]


async def test_failed_agent_fails_the_run_and_names_the_agent(ts_env: WorkflowEnvironment) -> None:
    fakes = FakeAgents(fail="executor")
    worker, run_id, queue = await _start(ts_env, fakes)
    async with worker:
        with pytest.raises(WorkflowFailureError) as info:
            await ts_env.client.execute_workflow(
                AgentPipelineWorkflow.run,
                PipelineInput(run_id=run_id, query="q"),
                id=run_id,
                task_queue=queue,
            )
        progress = await ts_env.client.get_workflow_handle(run_id).query(
            AgentPipelineWorkflow.progress
        )
    assert "executor failed" in str(info.value.cause)
    assert "GROQ_API_KEY rejected (401)" in str(info.value.cause)
    assert [c.agent for c in fakes.calls] == ["researcher", "planner", "executor"]  # not retried
    final = fakes.updates[-1]
    assert final.status == "FAILED" and final.failed_agent == "executor"
    assert progress.status == "FAILED"
    assert [s.status for s in progress.steps] == [
        "COMPLETED",
        "COMPLETED",
        "FAILED",
        "PENDING",
        "PENDING",
    ]


async def test_cancel_keeps_partial_results(ts_env: WorkflowEnvironment) -> None:
    fakes = FakeAgents(block="coder")
    worker, run_id, queue = await _start(ts_env, fakes)
    async with worker:
        handle = await ts_env.client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=run_id, query="q"),
            id=run_id,
            task_queue=queue,
        )
        await assert_eventually(fakes.blocked.is_set)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        progress = await handle.query(AgentPipelineWorkflow.progress)
    assert isinstance(info.value.cause, CancelledError)
    assert progress.status == "CANCELLED"
    assert [s.status for s in progress.steps] == [
        "COMPLETED",
        "COMPLETED",
        "COMPLETED",
        "CANCELLED",
        "PENDING",
    ]
    assert progress.steps[2].output == "out-executor"
    assert fakes.updates[-1].status == "CANCELLED" and fakes.updates[-1].cancelled_agent == "coder"
