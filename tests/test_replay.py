"""Replay: recorded histories must replay against today's workflow code without non-determinism."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER
from tests.fakes import FakeGroq
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[AgentPipelineWorkflow], data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None


def test_histories_hold_no_secrets() -> None:
    for path in HISTORIES:
        assert "gsk_" not in path.read_text(), path


async def test_pipeline_with_no_workflow_cache(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: object
) -> None:
    # max_cached_workflows=0 replays the whole history on every workflow task: any
    # non-determinism between the first execution and a replay fails this run.
    async with new_worker(max_cached_workflows=0):  # type: ignore[operator]
        result = await client.execute_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id="run-nocache", query="Build a snake game"),
            id=f"run-nocache-{settings.task_queue}",
            task_queue=settings.task_queue,
        )
    assert result.status == "COMPLETED" and fake_groq.count("finalizer") == 1


def test_each_recorded_shape_is_what_its_name_says() -> None:
    # Today's runs are agent loops (agent_turn / agent_tool activities behind the agent-loop
    # patch); a run's RUNNING and COMPLETED ride on its first and last turns' own writes, other
    # statuses and closing a stopped step are local activities. The shapes before must keep
    # replaying (the test above): *_v4 a local activity closing the Coder's step after its
    # checks round; *_v3 one activity per agent, statuses in steps; *_v2 two local record_run
    # calls; *_v1 record_run as regular activities.
    for path in HISTORIES:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        scheduled = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        ]
        markers = [
            e.marker_recorded_event_attributes.marker_name
            for e in history.events
            if e.HasField("marker_recorded_event_attributes")
        ]
        local = markers.count("core_local_activity")
        # The patch ids are stored base64-encoded in the markers' details.
        closes = base64.b64encode(b"checks-close-step").decode().rstrip("=") in path.read_text()
        if path.stem.endswith("_v1"):
            assert "record_run" in scheduled and local == 0
        elif path.stem.endswith("_v2"):
            assert "record_run" not in scheduled and local == 2, markers
        elif path.stem.endswith("_v3"):
            assert "researcher" in scheduled and "core_patch" in markers, path.stem
        else:
            assert scheduled[:3] == ["agent_turn", "agent_tool", "agent_turn"], scheduled
            assert "record_run" not in scheduled and "core_patch" in markers, path.stem
            if "agent_checks" in scheduled:  # its round closed the step, or a local activity did
                assert closes == (not path.stem.endswith("_v4")) and local == int(not closes)
