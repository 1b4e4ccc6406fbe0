"""Provider rate limits kept before the provider says 429, for the whole deployment: a fake Groq
on loopback enforcing N requests per window, bursts of runs over two worker processes with and
without the matching limit configured, waiting that is not failing, and the limiter itself on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from activities.breaker import BreakerRegistry
from activities.models import rate_limits
from activities.ratelimit import RateLimiter, blocked_for, parse_reset
from crewline.settings import RateLimit, Settings
from records.ledger import calls_of
from records.runs import get_run, steps_of
from records.tables import Step
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Status
from tests.procs import WorkerProcesses

MODEL = "llama-3.3-70b-versatile"
N, WINDOW = 10, 2.0  # the fake provider's limit: 10 requests in any 2 s
RUNS = 12  # 60 calls: six windows' worth


def limited(settings: Settings, requests: int, window: float) -> Settings:
    return settings.model_copy(
        update={
            "llm_rate_limits": {MODEL: RateLimit(requests_per_minute=requests)},
            "rate_limit_window_s": window,
        }
    )


async def burst(
    client: Client, settings: Settings, engine: Any, tmp_path: Path
) -> tuple[float, list[Any], set[str]]:
    """RUNS runs at once over two worker processes: wall time, results, step statuses seen."""
    seen: set[str] = set()
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn()
        workers.spawn()
        await asyncio.sleep(2)  # both polling
        started = time.monotonic()
        runs = [await start_pipeline(client, settings, attempts=40) for _ in range(RUNS)]
        pending = asyncio.gather(*(h.result() for _, h in runs))
        while not pending.done():
            with Session(engine) as session:
                seen |= set(session.exec(select(Step.status)).all())
            await asyncio.sleep(0.2)
        results = await pending
        wall = time.monotonic() - started
    return wall, [(run_id, r) for (run_id, _), r in zip(runs, results, strict=True)], seen


@pytest.mark.timeout(300)
async def test_a_burst_stays_under_the_providers_limit_across_two_workers(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    fake_groq.rate_limit = (N, WINDOW)
    wall, results, seen = await burst(client, limited(settings, N, WINDOW), engine, tmp_path)
    calls = len(fake_groq.requests)
    ideal = (calls / N - 1) * WINDOW  # the last window's calls can start this long after the first
    attempts = Counter(s.attempt for run_id, _ in results for s in steps_of(engine, run_id))
    print(
        f"\nwith GROQ/LLM rate limit {N}/{WINDOW:g}s: {RUNS} runs, {calls} calls, "
        f"{fake_groq.rejected} answered 429, step attempts {dict(attempts)}, "
        f"wall {wall:.1f} s vs the limit's ideal {ideal:.1f} s"
    )
    assert all(r.status == "COMPLETED" for _, r in results)
    assert fake_groq.rejected <= calls // 100  # under 1% of calls
    assert attempts == {1: RUNS * 5}  # waiting used no attempt
    assert "WAITING_FOR_RATE_LIMIT" in seen  # and showed as waiting


@pytest.mark.timeout(300)
async def test_the_same_burst_without_the_setting_meets_429s(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    fake_groq.rate_limit = (N, WINDOW)
    wall, results, _ = await burst(client, settings, engine, tmp_path)
    calls = len(fake_groq.requests)
    attempts = Counter(s.attempt for run_id, _ in results for s in steps_of(engine, run_id))
    print(
        f"\nwithout a limit configured: {RUNS} runs, {calls} calls, {fake_groq.rejected} "
        f"answered 429, step attempts {dict(sorted(attempts.items()))}, wall {wall:.1f} s"
    )
    assert all(r.status == "COMPLETED" for _, r in results)
    assert fake_groq.rejected > 0 and max(attempts) > 1


async def test_a_step_waiting_for_a_slot_can_be_cancelled_and_costs_nothing(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    settings = limited(settings, 1, 60.0)  # one call a minute: the second run must wait
    async with new_worker(settings=settings):
        first_id, first = await start_pipeline(client, settings)
        await assert_eventually(lambda: fake_groq.count("researcher") == 1)
        second_id, second = await start_pipeline(client, settings)

        def waiting() -> bool:
            return [s.status for s in steps_of(engine, second_id)] == ["WAITING_FOR_RATE_LIMIT"]

        await assert_eventually(waiting)
        [step] = steps_of(engine, second_id)
        assert step.error is not None and "waiting for rate limit" in step.error
        await second.cancel()
        with pytest.raises(WorkflowFailureError):
            await second.result()
        await first.terminate("test: done")  # its next step would wait a minute for a slot
    run = get_run(engine, second_id)
    assert run is not None and run.status == "CANCELLED"
    assert calls_of(engine, second_id) == []  # it never reached the provider: nothing charged
    assert fake_groq.count("researcher") == 1 and first_id != second_id


async def test_a_429_is_not_a_breaker_failure(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    fake_groq.script("planner", *[Status(429, headers={"retry-after": "0.05"})] * 6)
    registry = BreakerRegistry(threshold=5, open_s=30)
    async with new_worker(breakers=registry):
        _, handle = await start_pipeline(client, settings, attempts=10)
        result = await handle.result()
    assert result.status == "COMPLETED" and fake_groq.count("planner") == 7
    assert registry.get("groq", MODEL).times_opened == 0


# ---- the limiter itself, on both databases ------------------------------------------------------
@pytest.mark.both_databases
def test_requests_and_tokens_per_window(engine: Any, db_backend: str) -> None:
    limits = {
        "r": RateLimit(requests_per_minute=3),
        "t": RateLimit(tokens_per_minute=1000),
    }
    limiter = RateLimiter(engine, limits, window_s=60)
    first = [limiter.acquire("p/r", "r", 10, f"a{i}") for i in range(4)]
    granted = [g for g in first if g.id is not None]
    [refused] = [g for g in first if g.id is None]
    assert len(granted) == 3 and 60 < refused.wait_s <= 61.3 and "3 requests" in refused.why
    limiter.release(granted[0].id or 0)  # never sent: the slot is free again
    assert limiter.acquire("p/r", "r", 10, "retry").id is not None
    # Tokens: reservations count until corrected by the reported usage.
    tokens = [limiter.acquire("p/t", "t", 600, f"t{i}") for i in range(2)]
    assert tokens[0].id is not None and tokens[1].id is None and "1000 tokens" in tokens[1].why
    limiter.settle(tokens[0].id, 150)  # the call used far less than its worst case
    assert limiter.acquire("p/t", "t", 600, "t-after").id is not None
    # The provider said to wait: everyone waits.
    limiter.block("p/t", 30)
    blocked = limiter.acquire("p/t", "t", 1, "blocked")
    assert blocked.id is None and 29 < blocked.wait_s <= 30.5


def test_provider_rate_limit_headers() -> None:
    assert parse_reset("2m59.56s") == pytest.approx(179.56)
    assert parse_reset("7.66s") == pytest.approx(7.66)
    assert parse_reset("120ms") == pytest.approx(0.12)
    assert parse_reset("1h2m3s") == 3723
    assert parse_reset("30") == 30 and parse_reset("soon") is None and parse_reset(None) is None
    headers = {
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "4000", "x-ratelimit-reset-tokens": "9s",
    }  # fmt: skip
    assert blocked_for(headers) == pytest.approx(1.5)
    assert blocked_for({**headers, "x-ratelimit-remaining-requests": "3"}) is None


def test_limits_come_from_the_seeds_setting_and_the_json() -> None:
    settings = Settings(
        GROQ_API_KEY="gsk_" + "x" * 20, GROQ_RATE_LIMIT=30,
        AGENT_MODELS=json.dumps({"researcher": "llama-3.1-8b-instant"}),
        LLM_RATE_LIMITS=json.dumps(
            {"llama-3.1-8b-instant": {"requests_per_minute": 30, "tokens_per_minute": 6000}}
        ),
        _env_file=None,
    )  # fmt: skip
    limits = rate_limits(settings)
    assert limits[MODEL] == RateLimit(requests_per_minute=30)
    assert limits["llama-3.1-8b-instant"].tokens_per_minute == 6000
    with pytest.raises(ValueError, match="requests_per_minut"):
        Settings(LLM_RATE_LIMITS='{"m": {"requests_per_minut": 3}}', _env_file=None)
