"""A person in the loop: tool calls that wait for approval, on the real dev server (the time-out on
the time-skipping server), the real API, the real `groq` SDK against the fake model on loopback.

The model is scripted as a model behaves: it says why it wants the call, and when a call is
denied it reads the reason in the call's result and finishes another way."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from crewline import temporal
from crewline.settings import Settings
from records.approvals import calls_waiting
from records.events import events_after
from records.ledger import calls_of
from records.runs import artifacts_of, get_run, intents_of, turns_of
from tests.conftest import ADMIN_KEY, assert_eventually, serving, start_pipeline
from tests.fakes import Call, FakeGroq, Reply, tool_results
from tests.procs import WorkerProcesses
from workers.main import build_worker
from workflows.pipeline import AgentPipelineWorkflow

WRITE = Call("write_file", {"path": "game/main.py", "content": "print('snake')\n"})


def coder_that_respects_a_denial(agent: str, body: dict[str, Any]) -> Reply | None:
    """A coder that asks to write main.py, saying why; told it was denied, it answers with the
    code inline instead; told it worked, it says so."""
    if agent != "coder":
        return None
    results = tool_results(body)
    if not results:
        return Reply(text="I will write the game's entry point to game/main.py.", calls=[WRITE])
    if "denied this call" in results[-1] or "nobody approved" in results[-1]:
        return Reply(text=f"Not written ({results[-1][:80]}). The code, to paste: print('snake')")
    return Reply(text="Wrote game/main.py; run python game/main.py.")


async def _waiting(engine: Any, run_id: str) -> str:
    """The call id of the run's call waiting for a decision (once there is one)."""
    found: list[str] = []

    def check() -> bool:
        found[:] = [c.call_id for c in calls_waiting(engine, run_id)]
        return bool(found)

    await assert_eventually(check, timeout=60)
    return found[0]


@pytest.mark.both_databases
async def test_a_call_waits_for_approval_and_runs_once_approved(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api: httpx.AsyncClient, db_backend: str,
) -> None:  # fmt: skip
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, approve=["write_file"])
        call_id = await _waiting(engine, run_id)
        # Waiting: the run, its step and the call say so, everywhere; nothing was written.
        run = (await api.get(f"/runs/{run_id}")).json()
        assert run["status"] == "WAITING_FOR_APPROVAL"
        [pending] = [a for a in run["approvals"] if a["state"] == "PENDING"]
        assert pending["call"] == "write_file 'game/main.py'" and pending["agent"] == "coder"
        assert pending["reason"] == "I will write the game's entry point to game/main.py."
        assert pending["arguments"]["path"] == "game/main.py"
        coder = next(s for s in run["steps"] if s["agent"] == "coder")
        assert coder["status"] == "WAITING_FOR_APPROVAL"
        assert artifacts_of(engine, run_id) == []
        progress = await handle.query(AgentPipelineWorkflow.progress)
        assert [p.call_id for p in progress.approvals] == [call_id]
        metrics = (await api.get("/metrics")).text
        assert 'crewline_approvals_waiting{tool="write_file"} 1.0' in metrics
        assert 'crewline_runs{shadow="false",status="WAITING_FOR_APPROVAL"} 1.0' in metrics
        # A read key may look but not decide.
        read_key = (await api.post("/keys", json={"name": "watcher", "scope": "read"})).json()
        refused = await api.post(
            f"/runs/{run_id}/approvals/{call_id}", json={"decision": "approve"},
            headers={"Authorization": f"Bearer {read_key['key']}"},
        )  # fmt: skip
        assert refused.status_code == 403 and "needs admin or run" in refused.json()["detail"]
        # Approve: recorded by the run (200), which goes on.
        sent = await api.post(
            f"/runs/{run_id}/approvals/{call_id}",
            json={"decision": "approve", "reason": "looks fine"},
        )
        assert sent.status_code == 200, sent.text
        assert sent.json() | {} == {
            "run_id": run_id, "call_id": call_id, "decision": "approve", "applied": True,
            "state": "APPROVED",
        }  # fmt: skip
        again = await api.post(f"/runs/{run_id}/approvals/{call_id}", json={"decision": "deny"})
        assert again.status_code == 409 and "already decided: APPROVED" in again.json()["detail"]
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert [a.path for a in artifacts_of(engine, run_id)] == ["game/main.py"]
    _, calls = turns_of(engine, run_id)
    [write] = [c for c in calls if c.name == "write_file"]
    assert (write.approval, write.approval_note, write.ok) == ("APPROVED", "looks fine", True)
    assert (write.approval_by or "").startswith("admin-env-")
    assert write.approval_asked_at is not None and write.approval_decided_at is not None
    kinds = [
        (e.kind, json.loads(e.data_json).get("state")) for e in events_after(engine, run_id, 0)
    ]
    assert ("approval", "asked") in kinds and ("approval", "APPROVED") in kinds
    final = (await api.get(f"/runs/{run_id}")).json()
    assert final["status"] == "COMPLETED" and final["approvals"][0]["state"] == "APPROVED"
    metrics = (await api.get("/metrics")).text
    assert "crewline_approvals_waiting{" not in metrics
    assert "crewline_approval_oldest_wait_seconds 0.0" in metrics


async def test_a_denied_call_goes_back_to_the_model_with_the_reason(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api: httpx.AsyncClient,
) -> None:  # fmt: skip
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker(settings=settings.model_copy(
        update={"approval_required_tools": ["write_file"]}
    )):  # fmt: skip
        run_id, handle = await start_pipeline(client, settings)
        call_id = await _waiting(engine, run_id)
        sent = await api.post(
            f"/runs/{run_id}/approvals/{call_id}",
            json={"decision": "deny", "reason": "no files in this demo"},
        )
        assert sent.status_code == 200 and sent.json()["state"] == "DENIED"
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert artifacts_of(engine, run_id) == []  # never written
    told = fake_groq.calls("coder", run_id=run_id)[-1].body["messages"][-1]
    assert told["role"] == "tool" and "denied this call: no files in this demo" in told["content"]
    assert told["content"].startswith("error: not run: admin-env-")
    answer = (await api.get(f"/runs/{run_id}")).json()
    step = next(s for s in answer["steps"] if s["agent"] == "coder")
    assert step["output"].startswith("Not written (error: not run: admin-env-")


async def test_nobody_answering_denies_the_call_at_the_deadline(
    settings: Settings, fake_groq: FakeGroq, engine: Any
) -> None:
    """Time-skipping: 24 hours pass in a moment; the call is denied as timed out, the run goes
    on and completes. Its own time-skipping server: skipping is server-wide and stops while any
    activity is outstanding, so another test's leftovers on a shared one could hold the clock."""
    fake_groq.responder = coder_that_respects_a_denial
    settings = settings.model_copy(update={"task_queue": f"ts-{uuid.uuid4().hex[:8]}"})
    ts_env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal.test_server_path(),
        data_converter=temporal.DATA_CONVERTER,
    )
    try:
        async with build_worker(ts_env.client, settings, engine=engine, search_backend=None):
            run_id, handle = await start_pipeline(ts_env.client, settings, approve=["write_file"])
            result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        await ts_env.shutdown()
    assert result.status == "COMPLETED"
    _, calls = turns_of(engine, run_id)
    [write] = [c for c in calls if c.name == "write_file"]
    assert write.approval == "TIMED_OUT" and write.approval_by == "crewline"
    assert write.approval_note == "approval timed out after 24 h" and write.ok is False
    assert artifacts_of(engine, run_id) == []
    told = fake_groq.calls("coder", run_id=run_id)[-1].body["messages"][-1]["content"]
    assert "nobody approved this call in time (approval timed out after 24 h)" in told


async def test_approved_from_another_api_process_after_the_worker_died_runs_once(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """The worker holding the run is SIGKILLed while the run waits; a second API app (another
    process's view: its own engine and services) approves while no worker is up; a new worker
    picks the run up and writes the file exactly once."""
    fake_groq.responder = coder_that_respects_a_denial
    with WorkerProcesses(settings, tmp_path) as workers:
        first = workers.spawn()
        run_id, handle = await start_pipeline(client, settings, approve=["write_file"])
        call_id = await _waiting(engine, run_id)
        first.send_signal(signal.SIGKILL)
        first.wait()
        from crewline.db import make_engine

        other_engine = make_engine(settings.resolved_database_url)
        async with serving(
            settings, client, other_engine, {"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as other_api:
            sent = await other_api.post(
                f"/runs/{run_id}/approvals/{call_id}", json={"decision": "approve"}
            )
        other_engine.dispose()
        # No worker: Temporal keeps the decision; the run records it when a worker is back.
        assert sent.status_code == 202, sent.text
        assert sent.json()["applied"] is False and sent.json()["state"] == "PENDING"
        workers.spawn()
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.status == "COMPLETED"
    _, calls = turns_of(engine, run_id)
    [write] = [c for c in calls if c.name == "write_file"]
    assert write.approval == "APPROVED" and write.ok is True
    assert [a.path for a in artifacts_of(engine, run_id)] == ["game/main.py"]
    # The coder's turns: the one that asked, the one after the write; each billed once.
    coder = [c for c in calls_of(engine, run_id) if c.agent == "coder"]
    assert len(coder) == 2 == fake_groq.count("coder")
    # A watcher saw each of those once too, though a worker died and Temporal ran work again:
    # events are numbered without gaps, one per fact.
    stored = events_after(engine, run_id, 0)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    seen = [(e.kind, json.loads(e.data_json)) for e in stored]
    assert len([d for k, d in seen if k == "turn" and d["agent"] == "coder"]) == 2
    assert [d["call"] for k, d in seen if k == "tool"] == ["write_file 'game/main.py'"]
    assert [d["state"] for k, d in seen if k == "approval"] == ["asked", "APPROVED"]


async def test_a_cancelled_run_cancels_its_waiting_call(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api: httpx.AsyncClient,
) -> None:  # fmt: skip
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, approve=["write_file"])
        call_id = await _waiting(engine, run_id)
        assert (await api.post(f"/runs/{run_id}/cancel")).status_code == 202
        await assert_eventually(lambda: get_run(engine, run_id).status == "CANCELLED")  # type: ignore[union-attr]
    _, calls = turns_of(engine, run_id)
    [write] = [c for c in calls if c.call_id == call_id]
    assert write.approval == "CANCELLED" and write.status == "PENDING"
    late = await api.post(f"/runs/{run_id}/approvals/{call_id}", json={"decision": "approve"})
    assert late.status_code == 409
    assert handle is not None


async def test_a_shadow_records_would_ask_and_asks_nobody(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker():
        primary, done = await start_pipeline(client, settings, dry_run=True)
        await done.result()
        run_id, handle = await start_pipeline(
            client, settings, approve=["write_file"], shadow_of=primary, dry_run=True
        )
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert calls_waiting(engine, run_id) == []
    [intent] = [i for i in intents_of(engine, run_id) if i.tool == "write_file"]
    assert intent.summary == "would ask for approval: write_file 'game/main.py'"
    _, calls = turns_of(engine, run_id)
    [write] = [c for c in calls if c.name == "write_file"]
    assert write.approval == "WOULD_ASK" and write.intent
    told = fake_groq.calls("coder", run_id=run_id)[-1].body["messages"][-1]["content"]
    assert told.startswith("(shadow run: this call needs a person's approval; nobody was asked")


async def test_a_run_names_only_tools_the_agents_have(api: httpx.AsyncClient) -> None:
    answer = await api.post("/runs", json={"query": "x", "approve": ["rm_rf"]})
    assert answer.status_code == 422
    assert "no agent calls a tool 'rm_rf'; tools: " in answer.text and "write_file" in answer.text
