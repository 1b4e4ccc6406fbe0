"""The pipeline's agent loops on the time-skipping test server, with fake activities under the
real names: the order of turns and tool calls, what travels through the history, the stops
(max turns, a repeated call), failure and cancellation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contract import (
    CallRef,
    ChecksInput,
    ChecksResult,
    FinishInput,
    FinishResult,
    RunUpdate,
    ToolInput,
    ToolResult,
    TurnInput,
    TurnResult,
)
from activities.specs import specs
from records.statuses import AGENTS
from tests.conftest import assert_eventually
from workflows.pipeline import TOOL_REPEAT_LIMIT, AgentPipelineWorkflow, PipelineInput

Script = Callable[[TurnInput], TurnResult]


def answers(inp: TurnInput) -> TurnResult:
    """Every agent answers on its first turn; the researcher searches first."""
    if inp.agent == "researcher" and inp.turn == 1:
        return TurnResult(
            agent=inp.agent, turn=1,
            calls=[CallRef(call_id="c1", name="web_search", summary="web_search 'x'",
                           fingerprint="f1")],
        )  # fmt: skip
    return TurnResult(agent=inp.agent, turn=inp.turn, finished=True, output=f"out-{inp.agent}")


class FakeAgents:
    """Records every turn, tool call and finish; turns follow `script`; one agent can fail or
    block."""

    def __init__(
        self, script: Script = answers, fail: str | None = None, block: str | None = None
    ) -> None:
        self.script, self.fail, self.block = script, fail, block
        self.log: list[str] = []
        self.turns: list[TurnInput] = []
        self.finishes: list[FinishInput] = []
        self.updates: list[RunUpdate] = []
        self.checks: list[ChecksInput] = []
        self.pass_on_round = 1
        self.blocked = asyncio.Event()

    def activities(self) -> list[object]:
        @activity.defn(name="agent_turn")
        async def turn(inp: TurnInput) -> TurnResult:
            self.log.append(f"{inp.agent}:turn{inp.turn}")
            self.turns.append(inp)
            if inp.agent == self.fail:
                raise ApplicationError(
                    "GROQ_API_KEY rejected (401)", type="LLMAuthError", non_retryable=True
                )
            if inp.agent == self.block:
                self.blocked.set()
                while True:  # until cancelled; heartbeats deliver the cancel
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            return self.script(inp)

        @activity.defn(name="agent_tool")
        async def tool(inp: ToolInput) -> ToolResult:
            self.log.append(f"{inp.agent}:{inp.name}")
            return ToolResult(call_id=inp.call_id, name=inp.name, summary="ok")

        @activity.defn(name="agent_checks")
        async def acceptance(inp: ChecksInput) -> ChecksResult:
            self.log.append(f"{inp.agent}:checks{inp.round}")
            self.checks.append(inp)
            ok = inp.round >= self.pass_on_round
            return ChecksResult(status="passed" if ok else "failed", passed=int(ok), total=1,
                                retry=not ok and inp.round < inp.rounds)  # fmt: skip

        @activity.defn(name="agent_finish")
        async def finish(inp: FinishInput) -> FinishResult:
            self.log.append(f"{inp.agent}:finish")
            self.finishes.append(inp)
            return FinishResult(output=f"closed-{inp.agent}")

        @activity.defn(name="record_run")
        async def record_run(update: RunUpdate) -> None:
            self.updates.append(update)

        return [turn, tool, acceptance, finish, record_run]


async def run(env: WorkflowEnvironment, fakes: FakeAgents, **fields: object) -> tuple[str, object]:
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        env.client, task_queue=queue, workflows=[AgentPipelineWorkflow],
        activities=fakes.activities(),  # type: ignore[arg-type]
    )  # fmt: skip
    async with worker:
        handle = await env.client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=run_id, query="Build a snake game", **fields),  # type: ignore[arg-type]
            id=run_id,
            task_queue=queue,
        )
        return run_id, await handle.result()


async def test_each_agent_loops_turns_and_tool_calls_in_order(ts_env: WorkflowEnvironment) -> None:
    fakes = FakeAgents()
    _, result = await run(ts_env, fakes)
    assert fakes.log == [
        "researcher:turn1", "researcher:web_search", "researcher:turn2",
        "planner:turn1", "executor:turn1", "coder:turn1", "finalizer:turn1",
    ]  # fmt: skip
    assert result.status == "COMPLETED" and result.final_answer == "out-finalizer"  # type: ignore[attr-defined]
    # Earlier outputs are not carried through the history: each turn reads them from the rows.
    assert all(t.query == "Build a snake game" for t in fakes.turns)
    # The happy path's statuses ride on the first and last agents' own writes: no record_run.
    assert fakes.updates == [] and fakes.finishes == []
    statuses = [(t.agent, t.turn, t.run_status) for t in fakes.turns]
    assert statuses[0] == ("researcher", 1, "RUNNING") and statuses[1][2] is None
    assert statuses[-1] == ("finalizer", 1, "COMPLETED")
    # Only the last turn an agent's spec allows is told it is the last.
    assert [t.last_turn for t in fakes.turns] == [False] * len(fakes.turns)


async def test_an_agent_that_never_answers_stops_at_its_turn_limit(
    ts_env: WorkflowEnvironment,
) -> None:
    def busy(inp: TurnInput) -> TurnResult:  # a new search every turn, never an answer
        if inp.agent == "researcher" and not inp.last_turn:
            call = CallRef(call_id=f"c{inp.turn}", name="web_search", summary=f"q{inp.turn}",
                           fingerprint=f"f{inp.turn}")  # fmt: skip
            return TurnResult(agent=inp.agent, turn=inp.turn, calls=[call])
        return answers(inp) if inp.agent != "researcher" else TurnResult(
            agent=inp.agent, turn=inp.turn, finished=True, output="notes at the limit"
        )  # fmt: skip

    fakes = FakeAgents(busy)
    _, result = await run(ts_env, fakes)
    researcher = [t for t in fakes.turns if t.agent == "researcher"]
    limit = specs()["researcher"].max_turns
    assert len(researcher) == limit and researcher[-1].last_turn
    assert not any(t.last_turn for t in researcher[:-1])
    assert result.status == "COMPLETED"  # type: ignore[attr-defined]
    # MAX_TURNS lowers every spec's limit.
    fakes = FakeAgents(busy)
    await run(ts_env, fakes, max_turns=2)
    assert len([t for t in fakes.turns if t.agent == "researcher"]) == 2


async def test_a_repeated_identical_call_stops_the_agent_with_a_reason(
    ts_env: WorkflowEnvironment,
) -> None:
    def stuck(inp: TurnInput) -> TurnResult:
        if inp.agent == "coder":
            call = CallRef(call_id=f"c{inp.turn}", name="read_file", summary="read_file 'a.py'",
                           fingerprint="same")  # fmt: skip
            return TurnResult(agent=inp.agent, turn=inp.turn, calls=[call])
        return answers(inp)

    fakes = FakeAgents(stuck)
    _, result = await run(ts_env, fakes)
    coder = [e for e in fakes.log if e.startswith("coder:")]
    assert coder.count("coder:read_file") == TOOL_REPEAT_LIMIT - 1 and coder[-1] == "coder:finish"
    [stop] = [f for f in fakes.finishes if f.agent == "coder"]
    assert stop.stop_reason and "same call (read_file 'a.py') 3 times" in stop.stop_reason
    assert result.status == "COMPLETED"  # type: ignore[attr-defined]


async def test_failed_agent_fails_the_run_and_names_the_agent(ts_env: WorkflowEnvironment) -> None:
    fakes = FakeAgents(fail="executor")
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    async with Worker(
        ts_env.client, task_queue=queue, workflows=[AgentPipelineWorkflow],
        activities=fakes.activities(),  # type: ignore[arg-type]
    ):  # fmt: skip
        with pytest.raises(WorkflowFailureError) as info:
            await ts_env.client.execute_workflow(
                AgentPipelineWorkflow.run, PipelineInput(run_id=run_id, query="q"), id=run_id,
                task_queue=queue,
            )  # fmt: skip
        progress = await ts_env.client.get_workflow_handle(run_id).query(
            AgentPipelineWorkflow.progress
        )
    assert "executor failed" in str(info.value.cause)
    assert "GROQ_API_KEY rejected (401)" in str(info.value.cause)
    assert [t.agent for t in fakes.turns].count("executor") == 1  # not retried
    final = fakes.updates[-1]
    assert final.status == "FAILED" and final.failed_agent == "executor"
    assert progress.status == "FAILED"
    assert [s.status for s in progress.steps] == [
        "COMPLETED", "COMPLETED", "FAILED", "PENDING", "PENDING",
    ]  # fmt: skip


async def test_cancel_keeps_partial_results(ts_env: WorkflowEnvironment) -> None:
    fakes = FakeAgents(block="coder")
    queue = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    async with Worker(
        ts_env.client, task_queue=queue, workflows=[AgentPipelineWorkflow],
        activities=fakes.activities(),  # type: ignore[arg-type]
    ):  # fmt: skip
        handle = await ts_env.client.start_workflow(
            AgentPipelineWorkflow.run, PipelineInput(run_id=run_id, query="q"), id=run_id,
            task_queue=queue,
        )  # fmt: skip
        await assert_eventually(fakes.blocked.is_set)
        await handle.signal(AgentPipelineWorkflow.note_cancel, {"by": "ops (k1)"})  # type: ignore[arg-type]
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        progress = await handle.query(AgentPipelineWorkflow.progress)
    assert isinstance(info.value.cause, CancelledError)
    assert progress.status == "CANCELLED"
    assert [s.status for s in progress.steps] == [
        "COMPLETED", "COMPLETED", "COMPLETED", "CANCELLED", "PENDING",
    ]  # fmt: skip
    assert progress.steps[2].output == "out-executor"
    final = fakes.updates[-1]
    assert final.status == "CANCELLED" and final.cancelled_agent == "coder"
    assert final.error == "cancelled by ops (k1)"
    assert AGENTS[-1] == "finalizer"


def coder_answers_then_waits_for_checks(inp: TurnInput) -> TurnResult:
    if inp.agent == "coder":  # writes a file, then answers: the workflow checks, then closes
        if inp.turn in (1, 3):
            call = CallRef(call_id=f"w{inp.turn}", name="write_file", summary="write_file 'a.py'",
                           fingerprint=f"w{inp.turn}")  # fmt: skip
            return TurnResult(agent=inp.agent, turn=inp.turn, calls=[call])
        return TurnResult(agent=inp.agent, turn=inp.turn, then_finish=True, output="done")
    return answers(inp)


async def test_the_coder_repairs_until_its_checks_pass_then_its_step_closes(
    ts_env: WorkflowEnvironment,
) -> None:
    fakes = FakeAgents(coder_answers_then_waits_for_checks)
    fakes.pass_on_round = 2
    _, result = await run(ts_env, fakes)
    coder = [e for e in fakes.log if e.startswith("coder:")]
    assert coder == [
        "coder:turn1", "coder:write_file", "coder:turn2", "coder:checks1",
        "coder:turn3", "coder:write_file", "coder:turn4", "coder:checks2", "coder:finish",
    ]  # fmt: skip
    assert [c.turn for c in fakes.checks] == [2, 4] and {c.rounds for c in fakes.checks} == {3}
    assert result.status == "COMPLETED"  # type: ignore[attr-defined]
    # CHECK_ROUNDS=1: one round, failed or not, then the step closes.
    fakes = FakeAgents(coder_answers_then_waits_for_checks)
    fakes.pass_on_round = 5
    await run(ts_env, fakes, check_rounds=1)
    assert [e for e in fakes.log if e.startswith("coder:")][-2:] == [
        "coder:checks1",
        "coder:finish",
    ]
