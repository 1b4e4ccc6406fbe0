"""Fault injection: the real dev server, the real `groq` SDK, a scriptable fake Groq on 127.0.0.1.

Each scenario asserts what a user would check afterwards: did the run complete, how many calls
reached the provider and when, were steps repeated, were rows duplicated. Timestamps are taken at
the fake server, i.e. what the provider would see.
"""

from __future__ import annotations

import itertools
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from activities.breaker import BreakerRegistry
from crewline.settings import Settings
from records.runs import breakers, steps_of
from records.statuses import AGENTS as AGENT_ORDER
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Hang, Malformed, Reply, Status
from tests.procs import WorkerProcesses

MODEL = "llama-3.3-70b-versatile"


def _gaps(fake: FakeGroq, agent: str) -> list[float]:
    times = [c.at for c in fake.calls(agent)]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_5xx_then_success_backs_off_with_growing_jittered_delays(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    base, cap, k = 0.4, 5.0, 3
    settings = settings.model_copy(
        update={"retry_base_s": base, "retry_cap_s": cap, "retry_jitter_seed": 20261124}
    )
    fake_groq.script("planner", *[Status(500 + i) for i in range(k)])
    rng = random.Random(20261124)  # the worker's jitter generator, same seed
    expected = [rng.uniform(0, min(cap, base * 2**i)) for i in range(k)]
    async with new_worker(settings=settings):
        _, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert fake_groq.count("planner") == k + 1
    gaps = _gaps(fake_groq, "planner")
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.05 <= gap <= want + 1.0, (gaps, expected)
    assert len({round(g, 1) for g in expected}) == k  # jittered: no two delays alike


async def test_429_retry_after_is_honoured(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    fake_groq.script("executor", Status(429, headers={"retry-after": "2"}))
    async with new_worker():
        _, handle = await start_pipeline(client, settings)
        await handle.result()
    [gap] = _gaps(fake_groq, "executor")
    assert gap >= 2.0


async def test_breaker_opens_fails_fast_probes_once_and_recovers(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    open_s = 2.0
    settings = settings.model_copy(update={"breaker_open_s": open_s, "breaker_threshold": 5})
    fake_groq.outage = Status(503, message="provider down")
    registry = BreakerRegistry(threshold=5, open_s=open_s)
    async with new_worker(settings=settings, breakers=registry):
        _, first = await start_pipeline(client, settings, attempts=30)
        await assert_eventually(lambda: registry.get("groq", MODEL).state == "OPEN")
        # What /health shows (persisted just after the transition).
        await assert_eventually(lambda: [b.state for b in breakers(engine)] == ["OPEN"])
        _, second = await start_pipeline(client, settings, attempts=30)  # waits it out, no calls
        await assert_eventually(lambda: fake_groq.count("researcher") == 7, timeout=15)
        fake_groq.outage = None  # the provider comes back
        results = [await first.result(), await second.result()]
    assert [r.status for r in results] == ["COMPLETED", "COMPLETED"]
    times = [c.at for c in fake_groq.calls("researcher")]
    # 5 failures, then silence for the open period before each single probe: two failed
    # probes (the outage goes on), one successful one, then the other run's call: 9 in all.
    assert len(times) == 9
    assert times[5] - times[4] >= open_s - 0.05
    assert times[6] - times[5] >= open_s - 0.05
    assert times[7] - times[6] >= open_s - 0.05
    breaker = registry.get("groq", MODEL)
    assert breaker.state == "CLOSED" and breaker.times_opened == 3
    assert [b.state for b in breakers(engine)] == ["CLOSED"]


async def test_four_failures_then_success_never_opens(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    fake_groq.script("planner", *[Status(503)] * 4)
    registry = BreakerRegistry(threshold=5, open_s=30)
    async with new_worker(breakers=registry):
        _, handle = await start_pipeline(client, settings)
        await handle.result()
    assert fake_groq.count("planner") == 5
    assert registry.get("groq", MODEL).times_opened == 0


async def test_hung_connection_times_out_and_is_retried(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    settings = settings.model_copy(update={"llm_timeout_s": 1.0})
    fake_groq.script("executor", Hang(3))
    async with new_worker(settings=settings):
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED" and fake_groq.count("executor") == 2
    executor = next(s for s in steps_of(engine, run_id) if s.agent == "executor")
    assert executor.attempt == 2


async def test_malformed_bodies_retry_bounded_then_fail_with_reason(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    fake_groq.script("coder", Malformed("{not json"), Reply(text=""), Malformed('{"choices": []}'))
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, attempts=3)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert fake_groq.count("coder") == 3 and fake_groq.count("finalizer") == 0
    assert "coder failed" in str(info.value.cause) and "malformed response" in str(info.value.cause)
    coder = next(s for s in steps_of(engine, run_id) if s.agent == "coder")
    assert coder.status == "FAILED" and "malformed response" in (coder.error or "")
    assert "JSONDecodeError" not in str(info.value.cause)  # the last attempt's own reason


async def test_sigkill_in_each_of_the_five_steps_loses_and_repeats_nothing(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    rng = random.Random(7)
    targets = list(AGENT_ORDER)
    rng.shuffle(targets)
    runs: list[tuple[str, str, WorkflowHandle[Any, Any]]] = []
    with WorkerProcesses(settings, tmp_path) as workers:
        first = workers.spawn()
        for target in targets:
            run_id, handle = await start_pipeline(client, settings)
            for agent in AGENT_ORDER:  # seeded latencies move the kill point inside the runs
                action = Hang(60) if agent == target else Reply(delay_s=rng.uniform(0, 0.3))
                fake_groq.script_run(run_id, agent, action)
            runs.append((run_id, target, handle))
        await assert_eventually(
            lambda: all(len(fake_groq.calls(t, r)) == 1 for r, t, _ in runs), timeout=60
        )
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait()
        workers.spawn()
        results = [await h.result() for _, _, h in runs]
    assert [r.status for r in results] == ["COMPLETED"] * 5
    takeovers = []
    for run_id, target, _ in runs:
        counts = {a: len(fake_groq.calls(a, run_id)) for a in AGENT_ORDER}
        assert counts == {a: 2 if a == target else 1 for a in AGENT_ORDER}, (target, counts)
        steps = steps_of(engine, run_id)
        assert sorted(s.agent for s in steps) == sorted(AGENT_ORDER)
        takeovers.append(fake_groq.calls(target, run_id)[1].at - killed_at)
    print(f"takeover after SIGKILL: {sorted(round(t, 1) for t in takeovers)} s")
    assert max(takeovers) < 20


async def test_sigterm_lets_the_call_finish_and_records_it_once(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    fake_groq.script("planner", Reply(delay_s=3))
    with WorkerProcesses(settings, tmp_path) as workers:
        worker = workers.spawn()
        run_id, handle = await start_pipeline(client, settings)
        await assert_eventually(lambda: fake_groq.count("planner") == 1, timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
        planner = next(s for s in steps_of(engine, run_id) if s.agent == "planner")
        assert planner.status == "COMPLETED" and planner.attempt == 1
        workers.spawn()
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert fake_groq.count("planner") == 1 and fake_groq.count("executor") == 1
    assert len(steps_of(engine, run_id)) == 5
