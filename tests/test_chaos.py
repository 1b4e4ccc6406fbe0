"""Chaos: a worker SIGKILLed again and again mid-call loses no billed call and breaks no budget.

Runs spread over two worker processes; one of them is killed repeatedly (seeded timing) while
the fake provider, which answers every request it receives (a real provider bills those, client
gone or not), takes 0.6 s per call. The first kill happens while the victim is the only worker, so
at least one call is certainly cut off by a lost worker.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from cli.runs import costs_table
from crewline.settings import Settings
from records.ledger import calls_of, grouped
from records.statuses import AGENTS
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Reply
from tests.procs import WorkerProcesses

pytestmark = pytest.mark.both_databases
SEED = 1125
KILLS = 4
# Four runs without a budget worth mentioning, two whose budget runs out around the third step:
# a lost attempt's worst case must count against it, or the run would overspend after takeover.
BUDGETS = [Decimal("1.00")] * 4 + [Decimal("0.003")] * 2


async def test_killed_workers_never_lose_a_billed_call_nor_overspend(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    # Every call: the prompt counted as a tokenizer would (~4 characters a token), 500 completion
    # tokens (fewer if max_tokens was shrunk to fit the budget), 0.6 s.
    reply = Reply(prompt_tokens=None, completion_tokens=500, delay_s=0.6)
    for agent in AGENTS:
        fake_groq.script(agent, *[reply] * 60)
    kills = 0
    with WorkerProcesses(settings, tmp_path) as workers:
        victim = workers.spawn()
        started = [await start_pipeline(client, settings, budget_usd=b) for b in BUDGETS]
        handles = [h for _, h in started]
        await assert_eventually(lambda: len(fake_groq.requests) >= 1, timeout=60)
        while kills < KILLS:
            await asyncio.sleep(rng.uniform(0.1, 0.5))  # mid-call: calls take 0.6 s
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            victim = workers.spawn()
            if kills == 1:
                workers.spawn()  # the stable worker joins after the first kill
            seen = len(fake_groq.requests)
            await assert_eventually(lambda s=seen: len(fake_groq.requests) > s, timeout=60)  # type: ignore[misc]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 150)
    rows = [c for run_id, _ in started for c in calls_of(engine, run_id)]
    answered = Counter(r.body.get("user") for r in fake_groq.requests)
    charged = Counter(c.run_id for c in rows)
    states = Counter(c.cut_off_by or c.usage_source for c in rows)
    print(
        f"\nchaos: {len(BUDGETS)} runs, {kills} kills, {sum(answered.values())} calls answered, "
        f"{len(rows)} ledger rows {dict(states)}, statuses {Counter(r.status for r in results)}"
    )
    # What `crewline costs --by run` shows for these runs, estimated rows included.
    ids = {run_id for run_id, _ in started}
    items = [i for i in grouped(engine, "run", limit=500)[0] if i["key"] in ids]
    print(costs_table("run", items, sum((Decimal(i["total_usd"]) for i in items), Decimal(0))))
    assert sum(i["estimated_calls"] for i in items) == sum(
        c.usage_source == "estimated" for c in rows
    )
    overspent = []
    for (run_id, _), budget, result in zip(started, BUDGETS, results, strict=True):
        mine = [c for c in rows if c.run_id == run_id]
        assert all(c.state == "settled" for c in mine), "a reservation was left pending"
        # Never less than the provider billed: every answered call has its row.
        assert charged[run_id] >= answered[run_id], (run_id, charged[run_id], answered[run_id])
        # No completed step called twice: one reported answer per agent that completed.
        reported = Counter(c.agent for c in mine if c.usage_source == "reported")
        assert all(n == 1 for n in reported.values()), reported
        if budget > 1:
            assert result.status == "COMPLETED", result
            assert set(reported) == set(AGENTS)
        else:
            assert result.status in ("COMPLETED", "BUDGET_EXCEEDED"), result
        if sum((c.cost_usd for c in mine), Decimal(0)) > budget:
            overspent.append(run_id)
    assert overspent == []
    # A request that never left a killed worker can only add a row, never remove one.
    assert len(rows) - sum(answered.values()) <= kills
    assert states["worker_lost"] >= 1, "no call was cut off: the test did not test anything"
