"""The paths where concurrency could break a guarantee, on SQLite and on a real PostgreSQL server:
an idempotent POST raced by its own retries, the ledger's exactly-once key raced by concurrent
writers, step upserts raced, and many budgeted runs in parallel never overspending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlmodel import Session, func, select
from temporalio.client import Client
from temporalio.worker import Worker

from crewline.settings import Settings
from records import ledger
from records import runs as store
from records.ledger import calls_of
from records.runs import steps_of
from records.statuses import AGENTS
from records.tables import LedgerEntry, Run, Step
from tests.conftest import start_pipeline
from tests.fakes import FakeGroq, Reply

pytestmark = pytest.mark.both_databases
QUERY = "Build a snake game"


async def test_one_idempotency_key_raced_by_its_retries_starts_one_run(
    api: httpx.AsyncClient, engine: Any, client: Client, db_backend: str
) -> None:
    answers = await asyncio.gather(
        *(
            api.post("/runs", json={"query": QUERY}, headers={"Idempotency-Key": "retry-me"})
            for _ in range(12)
        )
    )
    assert [a.status_code for a in answers] == [202] * 12, [a.text for a in answers]
    run_ids = {a.json()["run_id"] for a in answers}
    assert len(run_ids) == 1
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Run)).one() == 1
    handle = client.get_workflow_handle(run_ids.pop())
    await handle.describe()  # the one workflow exists
    await handle.terminate("test: no worker")


def _attempt(run_id: str, attempt: int, cost_pusd: int = 1_000) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id, workflow_id=run_id, activity_id="3", attempt=attempt, agent="planner",
        provider="groq", model="m", prompt_tokens=10, completion_tokens=5, cost_pusd=cost_pusd,
        price_source="test", usage_source="reported",
    )  # fmt: skip


def test_the_ledger_key_holds_under_concurrent_writers(engine: Any) -> None:
    """Eight writers of the same attempt (a retried write racing the original), three attempts:
    one row per attempt, each settled once."""

    def write(attempt: int) -> None:
        ledger.reserve(engine, _attempt("run-race", attempt, cost_pusd=5_000))
        ledger.settle(engine, _attempt("run-race", attempt))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, [1, 2, 3] * 8))
    rows = calls_of(engine, "run-race")
    assert sorted(r.attempt for r in rows) == [1, 2, 3]
    assert {r.state for r in rows} == {"settled"} and {r.cost_pusd for r in rows} == {1_000}
    spent, lost = ledger.cost_of_activity(engine, "run-race", "3")
    assert spent == Decimal("0.000000003") and lost == []


def test_step_upserts_race_to_one_row(engine: Any) -> None:
    def upsert(i: int) -> None:
        store.upsert_step(engine, "run-steps", "coder", position=3, status="RUNNING", attempt=i)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(upsert, range(1, 17)))
    with Session(engine) as session:
        rows = session.exec(select(Step).where(Step.run_id == "run-steps")).all()
    assert len(rows) == 1 and 1 <= rows[0].attempt <= 16


async def test_parallel_budgeted_runs_never_overspend(
    client: Client,
    settings: Settings,
    engine: Any,
    fake_groq: FakeGroq,
    new_worker: Callable[..., Worker],
) -> None:
    # Half the runs can afford the five calls, half run out around the third or fourth.
    budgets = [Decimal("0.003"), Decimal("0.0018")] * 5
    for agent in AGENTS:  # the prompt counted like a tokenizer, 500 completion tokens a call
        fake_groq.script(agent, *[Reply(prompt_tokens=None, completion_tokens=500)] * 12)
    async with new_worker():
        started = [await start_pipeline(client, settings, budget_usd=b) for b in budgets]
        results = await asyncio.gather(*(h.result() for _, h in started))
    assert {r.status for r in results} == {"COMPLETED", "BUDGET_EXCEEDED"}
    for (run_id, _), result, budget in zip(started, results, budgets, strict=True):
        rows = calls_of(engine, run_id)
        spent = sum((r.cost_usd for r in rows), Decimal(0))
        assert spent <= budget, (run_id, spent)
        assert {r.state for r in rows} == {"settled"}
        assert result.spent_usd == spent
        completed = [s.agent for s in steps_of(engine, run_id) if s.status == "COMPLETED"]
        assert len(rows) == len(completed)  # one charged call per completed step, none twice
