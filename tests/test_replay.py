"""Replay: recorded histories must replay against today's workflow code without non-determinism."""

from __future__ import annotations

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


def test_current_histories_record_only_unhappy_statuses() -> None:
    # Today's runs write RUNNING and COMPLETED with their first and last steps' own rows (no
    # record_run at all on the happy path), and record other statuses with a local activity.
    # Runs recorded before that (*_v2: two local record_run calls) and before local activities
    # (*_v1: record_run as regular activities) must keep replaying (the test above).
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
        if path.stem.endswith("_v1"):
            assert "record_run" in scheduled and local == 0
        elif path.stem.endswith("_v2"):
            assert "record_run" not in scheduled and local == 2, markers
        else:
            assert "record_run" not in scheduled and "core_patch" in markers, path.stem
            completed = "finalizer" in scheduled
            assert local == (0 if completed else 1), (path.stem, markers)
