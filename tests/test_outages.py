"""Whatever dies, nothing is lost and nothing is billed twice: each fault with runs in flight, a
fake provider on loopback counting what it answered (its bill), and the runs, steps and ledger
audited afterwards — every run ends COMPLETED (or with a stated reason), no row says RUNNING
without a running workflow, no turn's model call is made again once its answer was recorded,
and the ledger holds a row for every call the provider answered (estimates labelled)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select
from temporalio.client import Client

from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, DevServer
from records.ledger import PENDING
from records.statuses import TERMINAL
from records.tables import LedgerEntry, Run
from tests.conftest import AUTH, assert_eventually, free_port, start_pipeline
from tests.fakes import FakeGroq, Reply
from tests.pg import PostgresServer, server_binaries
from tests.procs import WorkerProcesses, settings_env
from workflows.pipeline import AgentPipelineWorkflow

# Child processes, servers and minutes of outages: not for the everyday loop.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SLOW = Reply(delay_s=0.4)  # every call takes a little while: faults land mid-call


@dataclass
class Audit:
    runs: int
    completed: int
    stuck: list[str]  # rows not ended, or ended without a stated reason unless COMPLETED
    answered: int  # calls the provider answered (its bill)
    ledger_rows: int
    pending_rows: int
    estimated_rows: int
    rebilled_turns: int  # turns called again after their answer was recorded

    def ok(self) -> bool:
        return not self.stuck and self.pending_rows == 0 and self.rebilled_turns == 0


def audit(engine: Any, fake: FakeGroq, run_ids: list[str]) -> Audit:
    with Session(engine) as session:
        rows = {r.run_id: r for r in session.exec(select(Run).where(Run.run_id.in_(run_ids)))}  # type: ignore[attr-defined]
        ledger = list(
            session.exec(select(LedgerEntry).where(LedgerEntry.run_id.in_(run_ids)))  # type: ignore[attr-defined]
        )
    stuck = [
        rid for rid in run_ids
        if rid not in rows or rows[rid].status not in TERMINAL
        or (rows[rid].status != "COMPLETED" and not rows[rid].error)
    ]  # fmt: skip
    # A turn is one activity; an attempt after one whose answer was reported (settled with the
    # provider's usage) would be the model called again for an answer already recorded.
    by_activity: dict[tuple[str, str], list[LedgerEntry]] = {}
    for row in ledger:
        by_activity.setdefault((row.workflow_id, row.activity_id), []).append(row)
    rebilled = sum(
        1 for attempts in by_activity.values()
        if any(a.usage_source == "reported" for a in sorted(attempts, key=lambda a: a.attempt)[:-1])
    )  # fmt: skip
    answered = sum(1 for r in fake.requests if r.body.get("user") in run_ids)
    return Audit(
        runs=len(run_ids),
        completed=sum(1 for r in rows.values() if r.status == "COMPLETED"),
        stuck=stuck,
        answered=answered,
        ledger_rows=len(ledger),
        pending_rows=sum(1 for r in ledger if r.state == PENDING),
        estimated_rows=sum(1 for r in ledger if r.usage_source == "estimated"),
        rebilled_turns=rebilled,
    )


def report(name: str, result: Audit) -> None:
    print(
        f"\n{name}: runs {result.runs}, completed {result.completed}, stuck {len(result.stuck)}; "
        f"provider answered {result.answered}, ledger rows {result.ledger_rows} "
        f"(estimated {result.estimated_rows}, pending {result.pending_rows}); "
        f"turns re-billed {result.rebilled_turns}"
    )


async def retried_turns(client: Client, runs: list[str]) -> int:
    """Turn activities that ran again (attempt > 1) without a ledger row of their own: their
    answer was recorded, so the retry returned it instead of calling the model."""
    count = 0
    for run_id in runs:
        history = await client.get_workflow_handle(run_id).fetch_history()
        types = {
            e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        }
        for e in history.events:
            if e.HasField("activity_task_started_event_attributes"):
                started = e.activity_task_started_event_attributes
                if types.get(started.scheduled_event_id) == "agent_turn" and started.attempt > 1:
                    count += 1
    return count


def fake_bills_every_request(fake: FakeGroq) -> None:
    for agent in ("researcher", "planner", "executor", "coder", "finalizer"):
        fake.script(agent, *[SLOW] * 200)


# ---- the Temporal server -----------------------------------------------------------------------
async def test_temporal_server_killed_mid_burst_loses_nothing_and_bills_nothing_twice(
    settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    """SIGKILL of the server while answered calls' results are on their way back: the workers
    cannot complete those activities; after the restart Temporal retries them, and each finds
    its answer recorded instead of calling the model again."""
    fake_bills_every_request(fake_groq)
    server = DevServer(tmp_path / "temporal.db", port=free_port(), ui_port=free_port())
    await server.start()
    settings = settings.model_copy(update={"temporal_address": server.address})
    try:
        with WorkerProcesses(settings, tmp_path) as workers:
            workers.spawn()
            workers.spawn()
            client = await Client.connect(server.address, data_converter=DATA_CONVERTER)
            runs = [(await start_pipeline(client, settings))[0] for _ in range(6)]
            await assert_eventually(lambda: len(fake_groq.requests) >= 12, timeout=60)
            assert server.process is not None
            server.process.kill()  # calls in flight now answer into a dead server
            server.process.wait()
            await asyncio.sleep(15)  # long enough for the workers to give their results up
            await server.start()
            client = await Client.connect(server.address, data_converter=DATA_CONVERTER)
            for run_id in runs:
                await client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id).result()
            replayed = await retried_turns(client, runs)
    finally:
        server.stop()
    found = audit(engine, fake_groq, runs)
    report("temporal server SIGKILL", found)
    print(f"turn attempts after the restart that found their answer recorded: {replayed}")
    assert found.ok() and found.completed == len(runs)
    assert found.ledger_rows == found.answered  # every answered call ledgered exactly once
    assert replayed >= 1  # the fault hit answered turns, and they were not called again


# ---- the API -----------------------------------------------------------------------------------
async def test_api_killed_during_a_post_burst_then_retried_runs_each_request_once(
    settings: Settings, fake_groq: FakeGroq, engine: Any, client: Client, tmp_path: Path
) -> None:
    """Concurrent POSTs with Idempotency-Keys, `kill -9` of `crewline api` in the middle, the
    same requests again: one run per key, every one of them runs, nothing stays QUEUED."""
    port = free_port()
    env = settings_env(settings.model_copy(update={
        "api_port": port, "key_max_inflight": 1000, "key_runs_per_minute": 1000,
        "reconcile_every_s": 1.0,
    }))  # fmt: skip

    def api() -> subprocess.Popen[bytes]:
        with (tmp_path / "api.log").open("ab") as out:
            return subprocess.Popen([str(BIN / "crewline"), "api"], env=env, cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    keys = [f"burst-{uuid.uuid4().hex[:10]}" for _ in range(120)]
    url = f"http://127.0.0.1:{port}"

    async def post_all(http: httpx.AsyncClient) -> dict[str, str]:
        async def one(key: str) -> tuple[str, str | None]:
            try:
                answer = await http.post("/runs", json={"query": "Build a snake game"},
                                         headers={**AUTH, "Idempotency-Key": key})  # fmt: skip
            except httpx.HTTPError:
                return key, None
            return key, answer.json()["run_id"] if answer.status_code == 202 else None

        return {k: rid for k, rid in await asyncio.gather(*(one(k) for k in keys)) if rid}

    first = api()
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn()
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await assert_eventually(lambda: _listening(url), timeout=30)
            burst = asyncio.create_task(post_all(http))
            await asyncio.sleep(0.6)
            first.kill()  # mid-burst: some rows written, some workflows not started
            first.wait()
            accepted = await burst
        orphans = await rows_without_workflow(engine, client)
        second = api()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                await assert_eventually(lambda: _listening(url), timeout=30)
                retried = await post_all(http)
                assert len(retried) == len(keys)  # every request, retried, was accepted
                runs = sorted(set(retried.values()))
                assert len(runs) == len(keys)  # one run per key, never two

                async def all_ended() -> bool:
                    listing = (await http.get("/runs", params={"limit": 200}, headers=AUTH)).json()
                    return all(i["status"] in TERMINAL for i in listing["items"])

                await assert_eventually(all_ended, timeout=180, interval=1)
                health = (await http.get("/health")).json()
        finally:
            second.kill()
            second.wait()
    found = audit(engine, fake_groq, runs)
    report("API SIGKILL during a POST burst", found)
    print(f"before the retry: {len(accepted)} answered 202, {len(orphans)} rows without a workflow")
    assert found.ok() and found.completed == len(keys)
    assert found.ledger_rows == found.answered
    assert health["reconciler"]["ok"]


async def rows_without_workflow(engine: Any, client: Client) -> list[str]:
    """Run rows whose workflow does not exist (what a crash between the two leaves)."""
    from temporalio.service import RPCError

    with Session(engine) as session:
        queued = [r.run_id for r in session.exec(select(Run).where(Run.status == "QUEUED"))]
    missing = []
    for run_id in queued:
        try:
            await client.get_workflow_handle(run_id).describe()
        except RPCError:
            missing.append(run_id)
    return missing


async def _listening(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            await http.get(f"{url}/health")
        return True
    except httpx.HTTPError:
        return False


# ---- the database ---------------------------------------------------------------------------------
async def test_sqlite_locked_for_30_s_waits_and_loses_nothing(
    settings: Settings, fake_groq: FakeGroq, engine: Any, client: Client, tmp_path: Path
) -> None:
    """Another process holds SQLite's write lock for 30 s (past the 10 s busy timeout): steps
    wait for the database instead of failing their attempt, and nothing is billed twice."""
    fake_bills_every_request(fake_groq)
    db_file = settings.resolved_database_url.removeprefix("sqlite:///")
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn()
        runs = [(await start_pipeline(client, settings))[0] for _ in range(4)]
        await assert_eventually(lambda: len(fake_groq.requests) >= 4, timeout=60)
        released = threading.Event()

        def hold() -> None:
            lock = sqlite3.connect(db_file, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")
            released.wait(30)
            lock.rollback()
            lock.close()

        from cli.server import create_app

        app = create_app(settings, client=client, engine=engine, reconcile=False)
        async with app.router.lifespan_context(app):  # the API is up when the lock is taken
            holder = threading.Thread(target=hold)
            holder.start()
            started = time.monotonic()
            await asyncio.sleep(0.5)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                         headers=AUTH) as http:  # fmt: skip
                refused = await http.post("/runs", json={"query": "Build a snake game"})
        # A write the locked database refuses: 503 and when to come back, not a 500.
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "database is unavailable" in refused.json()["detail"]
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - started)))
        released.set()
        holder.join()
        for run_id in runs:
            await client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id).result()
    found = audit(engine, fake_groq, runs)
    report("SQLite locked 30 s", found)
    assert found.ok() and found.completed == len(runs)
    assert found.ledger_rows == found.answered


async def test_postgres_stopped_for_20_s_waits_and_loses_nothing(
    settings: Settings, fake_groq: FakeGroq, client: Client, tmp_path: Path
) -> None:
    bindir = server_binaries()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server binaries (`.ci/run` installs them)")
        pytest.skip("no PostgreSQL server binaries")
    pg = PostgresServer(bindir).start()
    try:
        settings = settings.model_copy(update={"database_url": pg.new_database()})
        engine = make_engine(settings.resolved_database_url)
        fake_bills_every_request(fake_groq)
        with WorkerProcesses(settings, tmp_path) as workers:
            workers.spawn()
            runs = [(await start_pipeline(client, settings))[0] for _ in range(4)]
            await assert_eventually(lambda: len(fake_groq.requests) >= 4, timeout=60)
            pg.pause()
            await asyncio.sleep(20)
            pg.resume()
            for run_id in runs:
                await client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id).result()
        found = audit(engine, fake_groq, runs)
        engine.dispose()
    finally:
        pg.stop()
    report("PostgreSQL stopped 20 s", found)
    assert found.ok() and found.completed == len(runs)
    assert found.ledger_rows == found.answered


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
async def test_a_full_data_disk_waits_until_there_is_room(
    settings: Settings, fake_groq: FakeGroq, client: Client, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        settings = settings.model_copy(update={"data_dir": disk / "data"})
        engine = make_engine(settings.resolved_database_url)
        fake_bills_every_request(fake_groq)
        with WorkerProcesses(settings, tmp_path) as workers:
            workers.spawn()
            runs = [(await start_pipeline(client, settings))[0] for _ in range(3)]
            await assert_eventually(lambda: len(fake_groq.requests) >= 3, timeout=60)
            filler = disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
            await asyncio.sleep(15)  # nothing can be written meanwhile
            filler.unlink()
            for run_id in runs:
                await client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id).result()
        found = audit(engine, fake_groq, runs)
        engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    report("data disk full 15 s", found)
    assert found.ok() and found.completed == len(runs)
    assert found.ledger_rows == found.answered


@needs_root
async def test_a_database_unwritable_past_the_retry_budget_is_reconciled_when_it_is_back(
    settings: Settings, fake_groq: FakeGroq, client: Client, tmp_path: Path
) -> None:
    """The app database cannot be written (its disk full) for longer than the steps' retry
    budget: Temporal fails the runs. Once it can be written again the runs' rows end FAILED with
    the reason and the calls they still held are settled (the one whose answer could not be
    recorded at its worst case, labelled) — nothing RUNNING forever, nothing pending."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        settings = settings.model_copy(update={
            "data_dir": disk / "data", "llm_max_attempts": 2, "db_patience_s": 2.0,
            "llm_step_timeout_s": 20.0, "reconcile_every_s": 0.5,
        })  # fmt: skip
        engine = make_engine(settings.resolved_database_url)
        fake_bills_every_request(fake_groq)
        from cli.server import create_app

        app = create_app(settings, client=client, engine=engine)
        with WorkerProcesses(settings, tmp_path) as workers:
            workers.spawn()
            runs = [(await start_pipeline(client, settings, **_budget()))[0] for _ in range(3)]
            await assert_eventually(lambda: len(fake_groq.requests) >= 3, timeout=60)
            filler = disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)

            async def failed_in_temporal() -> bool:
                states = [(await client.get_workflow_handle(r).describe()).status for r in runs]
                return all(s is not None and s.name == "FAILED" for s in states)

            await asyncio.sleep(25)  # past every step's retry budget
            filler.unlink()
            await assert_eventually(failed_in_temporal, timeout=120, interval=0.5)
            async with app.router.lifespan_context(app):  # the API's reconciler runs
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                             headers=AUTH) as http:  # fmt: skip

                    async def settled() -> bool:
                        listing = (await http.get("/runs", params={"status": "RUNNING"})).json()
                        return (
                            listing["total"] == 0
                            and not audit(engine, fake_groq, runs).pending_rows
                        )

                    await assert_eventually(settled, timeout=60, interval=0.5)
        found = audit(engine, fake_groq, runs)
        with Session(engine) as session:
            ended = list(session.exec(select(Run).where(Run.run_id.in_(runs))))  # type: ignore[attr-defined]
        engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    report("database unwritable past the retry budget", found)
    assert not found.stuck and found.pending_rows == 0 and found.rebilled_turns == 0
    assert found.ledger_rows >= found.answered  # an answer lost with its settle: its worst case
    assert {r.status for r in ended} == {"FAILED"} and all(r.error for r in ended)


def _budget() -> dict[str, Any]:
    return {"attempts": 2, "timeout_s": 20}


# ---- the embedded stack ------------------------------------------------------------------------
async def test_crewline_up_restarts_what_dies_and_a_killed_up_loses_nothing(
    fake_groq: FakeGroq, tmp_path: Path
) -> None:
    """Under `crewline up`: SIGKILL its Temporal server, then its worker — each is restarted and
    said so; then SIGKILL `crewline up` itself mid-run and start it again — every run completes,
    every answered call is ledgered once, no turn is billed twice."""
    from tests.test_stack import _children_of, _env, _get, _up, _wait_up

    fake_bills_every_request(fake_groq)
    env = _env(tmp_path, LLM_PROVIDER="groq", GROQ_API_KEY="gsk_fault_test_key_0000000",
               GROQ_BASE_URL=fake_groq.base_url, WORKER_METRICS_PORT="0")  # fmt: skip
    api = env["CREWLINE_API_URL"]
    stack = _up(env, tmp_path, "up1.log")
    runs: list[str] = []
    try:
        await _wait_up(tmp_path, "up1.log")

        def start() -> str:
            answer = _get(tmp_path, f"{api}/health")  # warm the key file read
            assert answer.status_code in (200, 503)
            key = (tmp_path / "data" / "admin.key").read_text().strip()
            made = httpx.post(f"{api}/runs", json={"query": "Build a snake game"},
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert made.status_code == 202, made.text
            return str(made.json()["run_id"])

        def child(name: str) -> int:
            for pid in _children_of(stack.pid):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if name.encode() in cmdline:
                    return pid
            raise AssertionError(f"no {name} child")

        def part_ok() -> bool:
            stack_part = _get(tmp_path, f"{api}/health").json().get("stack", {})
            return bool(stack_part.get("ok"))

        runs += [start() for _ in range(2)]
        await assert_eventually(lambda: len(fake_groq.requests) >= 3, timeout=60)
        os.kill(child("start-dev"), signal.SIGKILL)  # the Temporal server
        await assert_eventually(lambda: "child_restarted" in (tmp_path / "up1.log").read_text(),
                                timeout=60)  # fmt: skip
        runs += [start()]
        os.kill(child("cli worker"), signal.SIGKILL)  # the worker
        await assert_eventually(
            lambda: (tmp_path / "up1.log").read_text().count("child_restarted") >= 2, timeout=60
        )
        await assert_eventually(part_ok, timeout=30)
        restarts = _get(tmp_path, f"{api}/health").json()["stack"]["restarts"]
        assert restarts.get("temporal server") == 1 and sum(restarts.values()) == 2
        runs += [start() for _ in range(2)]
        await assert_eventually(lambda: len(fake_groq.requests) >= 20, timeout=120)
        stack.kill()  # `crewline up` itself; its children get one SIGTERM each, and stop
        stack.wait()
        await assert_eventually(lambda: not _children_of(stack.pid), timeout=60)
    finally:
        if stack.poll() is None:
            stack.kill()
    stack = _up(env, tmp_path, "up2.log")
    try:
        await _wait_up(tmp_path, "up2.log")

        def all_done() -> bool:
            statuses = [_get(tmp_path, f"{api}/runs/{r}").json()["status"] for r in runs]
            return all(s in TERMINAL for s in statuses)

        await assert_eventually(all_done, timeout=180, interval=1)
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(60)
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'crewline.db'}")
    found = audit(engine, fake_groq, runs)
    report("crewline up: server, worker and up SIGKILLed", found)
    assert found.ok() and found.completed == len(runs)
    assert found.ledger_rows == found.answered
