"""A run watched live: `GET /runs/{id}/events` (Server-Sent Events) on the real API served by
uvicorn on loopback, a real worker on the dev server, the real `groq` SDK against the fake model.

The run pauses for an approval, which gives the test a moment that is surely mid-run: the client
disconnects there, the run goes on without it, and the reconnect names the last event it saw."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from temporalio.client import Client
from temporalio.worker import Worker

from crewline.settings import Settings
from records.events import events_after
from tests.conftest import ADMIN_KEY, assert_eventually, run_cli
from tests.fakes import FakeGroq
from tests.test_approvals import coder_that_respects_a_denial

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def _read(
    http: httpx.AsyncClient, path: str, until: Callable[[ServerSentEvent], bool] | None = None,
    headers: dict[str, str] | None = None,
) -> list[ServerSentEvent]:  # fmt: skip
    """Events of the stream until `until` says stop (then the client hangs up), or until the
    server ends the stream."""
    got: list[ServerSentEvent] = []
    async with aconnect_sse(http, "GET", path, headers=dict(headers or {})) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for event in source.aiter_sse():
            got.append(event)
            if until is not None and until(event):
                break
    return got


@pytest.mark.both_databases
async def test_a_reconnect_with_last_event_id_gets_every_event_once_in_order(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api_url: str, db_backend: str,
) -> None:  # fmt: skip
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker(), httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=60) as http:
        started = await http.post(
            "/runs", json={"query": "Build a snake game", "approve": ["write_file"]}
        )
        run_id = started.json()["run_id"]
        handle = client.get_workflow_handle(run_id)
        path = f"/runs/{run_id}/events"
        # First connection: from the start until the coder asks; then the client goes away.
        first = await _read(
            http, path, until=lambda e: e.event == "approval" and e.json()["state"] == "asked"
        )
        asked = first[-1].json()
        assert asked["agent"] == "coder" and asked["call"] == "write_file 'game/main.py'"
        assert asked["reason"] == "I will write the game's entry point to game/main.py."
        # While nobody watches, the run is approved and goes on to the end.
        sent = await http.post(
            f"/runs/{run_id}/approvals/{asked['call_id']}", json={"decision": "approve"}
        )
        assert sent.status_code == 200, sent.text
        await asyncio.wait_for(handle.result(), timeout=120)
        # Second connection names the last event it saw; the server ends the stream after the
        # run's final status.
        second = await _read(http, path, headers={"Last-Event-ID": first[-1].id})
    seen = first + second
    stored = events_after(engine, run_id, 0)
    assert len(second) > 5  # the reconnect had a lot to catch up on
    assert [int(e.id) for e in seen] == [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert [e.event for e in seen] == [e.kind for e in stored]
    assert [e.json() for e in seen][5] == {
        "seq": stored[5].seq, "at": stored[5].at.isoformat(), **json.loads(stored[5].data_json)
    }  # fmt: skip
    # What a watcher learns, in order: the run started, each agent started and finished, the
    # coder asked and was answered, the write happened once, the run ended.
    assert seen[0].event == "run" and seen[0].json()["status"] == "RUNNING"
    assert seen[-1].event == "run" and seen[-1].json()["status"] == "COMPLETED"
    steps = [(e.json()["agent"], e.json()["status"]) for e in seen if e.event == "step"]
    assert steps[0] == ("researcher", "RUNNING") and steps[-1] == ("finalizer", "COMPLETED")
    # The coder's part, as a watcher sees it: asked, the run waits, approved, the run goes on,
    # the write happens once, then the coder's next turn and its checks.
    start = next(
        i for i, e in enumerate(seen) if e.event == "step" and e.json()["agent"] == "coder"
    )
    coder = [
        (e.event, e.json().get("status") or e.json().get("state") or e.json().get("name"))
        for e in seen[start:]
    ]
    assert coder[:9] == [
        ("step", "RUNNING"),
        ("turn", None),
        ("approval", "asked"),
        ("run", "WAITING_FOR_APPROVAL"),
        ("approval", "APPROVED"),
        ("run", "RUNNING"),
        ("tool", None),
        ("turn", None),
        ("checks", "not run"),
    ], "\n".join(f"{e.event} {e.data}" for e in seen)
    tools = [e.json() for e in seen if e.event == "tool"]
    assert [(t["call"], t["ok"]) for t in tools] == [("write_file 'game/main.py'", True)]
    turns = [e.json() for e in seen if e.event == "turn"]
    assert all("text" not in t for t in turns)  # summaries only: TRACE_CONTENT is off
    spent = [float(t["spent_usd"]) for t in turns]
    assert spent == sorted(spent) and spent[-1] > 0  # spend updates, never going back


async def test_an_ended_run_replays_its_events_and_closes(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api_url: str,
) -> None:  # fmt: skip
    async with new_worker(), httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=60) as http:
        run_id = (await http.post("/runs", json={"query": "Build a snake game"})).json()["run_id"]
        handle = client.get_workflow_handle(run_id)
        await asyncio.wait_for(handle.result(), timeout=120)
        whole = await _read(http, f"/runs/{run_id}/events")
        assert [int(e.id) for e in whole] == [e.seq for e in events_after(engine, run_id, 0)]
        # `?after=` is the same as the header, for clients that cannot set one (EventSource).
        tail = await _read(http, f"/runs/{run_id}/events?after={whole[-3].id}")
        assert [e.id for e in tail] == [e.id for e in whole[-2:]]
        bad = await http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "twelve"})
        assert bad.status_code == 422 and "must be an event number" in bad.text
        missing = await http.get("/runs/run-nope/events")
        assert missing.status_code == 404 and "not found" in missing.json()["detail"]
        # The stream's subscribers are gone when their streams are.
        metrics = (await http.get("/metrics")).text
        assert "crewline_event_streams 0.0" in metrics


async def test_crewline_run_follows_the_stream_and_shows_the_wait(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api_url: str, tmp_path: Any,
) -> None:  # fmt: skip
    """`crewline run` prints the pending call and how to decide; `crewline approve` (no call id:
    the run's one waiting call) decides it; the first command then sees the run to its end."""
    fake_groq.responder = coder_that_respects_a_denial
    async with new_worker():
        follow = asyncio.create_task(
            run_cli("run", "Build a snake game", "--approve", "write_file", api_url=api_url,
                    cwd=tmp_path)
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=api_url, headers=AUTH) as http:

            async def waiting() -> bool:
                runs = (await http.get("/runs", params={"status": "WAITING_FOR_APPROVAL"})).json()
                return bool(runs["items"])

            await assert_eventually(waiting, timeout=60)
            run_id = (await http.get("/runs")).json()["items"][0]["run_id"]
            # It follows the run's stream (it does not poll): the API holds one for it.
            metrics = (await http.get("/metrics")).text
            assert "crewline_event_streams 1.0" in metrics
        shown = await run_cli("status", run_id, api_url=api_url, cwd=tmp_path)
        assert "WAITING_FOR_APPROVAL" in shown.stdout
        assert "? write_file 'game/main.py' waits for approval" in shown.stdout
        decided = await run_cli("approve", run_id, api_url=api_url, cwd=tmp_path)
        assert decided.returncode == 0, decided.stderr
        assert "approved write_file 'game/main.py'" in decided.stdout
        done = await asyncio.wait_for(follow, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "coder      ? write_file 'game/main.py' waits for approval" in out
    assert f"crewline approve {run_id}" in out
    written = out.index("coder      ▸ write_file 'game/main.py' → wrote game/main.py")
    assert out.index("waits for approval") < out.index("approved by admin-env-") < written
    assert "run COMPLETED" in out
