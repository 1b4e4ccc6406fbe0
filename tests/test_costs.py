"""Costs: pricing through genai-prices, the exactly-once ledger, budgets that cannot be overspent."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price
from temporalio.client import Client
from temporalio.worker import Worker

from costs.budget import BudgetExhaustedError, estimate_tokens, plan_call
from costs.pricing import ModelPrice, Pricer, UnknownPriceError
from crewline.settings import Settings
from records.ledger import calls_of, record_call
from records.runs import steps_of
from records.statuses import AGENTS as AGENT_ORDER
from records.tables import LedgerEntry, to_pico
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Hang, Reply, Status
from workers.main import build_worker
from workflows.pipeline import AgentPipelineWorkflow

pytestmark = pytest.mark.both_databases

MODEL = "llama-3.3-70b-versatile"


def _groq_price(prompt: int, completion: int, model: str = MODEL) -> Decimal:
    return calc_price(
        Usage(input_tokens=prompt, output_tokens=completion), model, provider_id="groq"
    ).total_price


async def test_each_call_costs_exactly_what_genai_prices_says(
    client: Client,
    settings: Settings,
    engine: Any,
    new_worker: Callable[..., Worker],
    api: httpx.AsyncClient,
) -> None:
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, budget_usd=Decimal("1"))
        result = await handle.result()
    one = _groq_price(100, 50)
    calls = calls_of(engine, run_id)
    assert [c.agent for c in calls] == list(AGENT_ORDER)
    assert all(c.cost_usd == one and c.usage_source == "reported" for c in calls)
    assert all(
        c.price_source.startswith("genai-prices") and c.input_per_mtok == "0.59" for c in calls
    )
    assert result.spent_usd == 5 * one  # the workflow's own running total agrees
    body = (await api.get(f"/runs/{run_id}/costs")).json()
    assert Decimal(body["total_usd"]) == 5 * one and body["reserved_usd"] == "0"
    assert {a: Decimal(v) for a, v in body["by_agent"].items()} == dict.fromkeys(AGENT_ORDER, one)
    assert len(body["calls"]) == 5 and body["calls"][0]["usage_source"] == "reported"
    steps = (await api.get(f"/runs/{run_id}")).json()["steps"]
    assert all(Decimal(s["cost_usd"]) == one for s in steps)


async def test_rejected_attempts_cost_nothing_cut_off_ones_keep_their_worst_case(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    settings = settings.model_copy(update={"llm_timeout_s": 1.0})
    fake_groq.script("planner", Status(503))  # rejected: no row
    fake_groq.script("executor", Hang(3))  # cut off: the provider may have billed it
    async with new_worker(settings=settings):
        run_id, handle = await start_pipeline(client, settings)
        await handle.result()
    rows = {(c.agent, c.attempt): c for c in calls_of(engine, run_id)}
    assert ("planner", 1) not in rows and rows[("planner", 2)].usage_source == "reported"
    cut = rows[("executor", 1)]
    # Cut off: the provider may have generated up to max_tokens and billed them, so the row keeps
    # the reservation's worst case — never less than the bill.
    sent = fake_groq.calls("executor")[0].body["max_tokens"]
    assert (cut.usage_source, cut.cut_off_by, cut.state) == ("estimated", "timeout", "settled")
    assert cut.completion_tokens == sent and cut.prompt_tokens > 0
    assert cut.cost_usd == _groq_price(cut.prompt_tokens, sent)
    assert rows[("executor", 2)].usage_source == "reported"
    executor = next(s for s in steps_of(engine, run_id) if s.agent == "executor")
    assert executor.cost_usd == cut.cost_usd + rows[("executor", 2)].cost_usd


async def test_unknown_model_is_a_startup_error_naming_the_fix(
    client: Client, settings: Settings
) -> None:
    bad = settings.model_copy(update={"groq_model": "no-such-model"})
    with pytest.raises(UnknownPriceError, match="MODEL_PRICES"):
        build_worker(client, bad)
    local = settings.model_copy(
        update={
            "llm_provider": "openai",
            "llm_base_url": "http://127.0.0.1:1/v1",
            "llm_model": "llama3.1",
        }
    )
    with pytest.raises(UnknownPriceError, match=r"openai/llama3\.1"):
        build_worker(client, local)
    priced = local.model_copy(
        update={"model_prices": {"llama3.1": ModelPrice(input_per_mtok=0, output_per_mtok=0)}}
    )
    build_worker(client, priced)  # explicitly free: fine


def test_override_and_scripted_prices() -> None:
    pricer = Pricer(
        "openai",
        {"llama3.1": ModelPrice(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))},
    )
    priced = pricer.price("llama3.1", 1_000_000, 500_000)
    assert priced.cost_usd == Decimal("2") and priced.source == "MODEL_PRICES override"
    assert Pricer("scripted", {}).price("anything", 10**6, 10**6).cost_usd == 0


def test_ledger_write_is_idempotent(engine: Any) -> None:
    entry = dict(
        run_id="r", workflow_id="r", activity_id="3", attempt=1, agent="planner", provider="groq",
        model=MODEL, prompt_tokens=1, completion_tokens=1, cost_pusd=5, price_source="x", usage_source="reported",
    )  # fmt: skip
    assert record_call(engine, LedgerEntry(**entry)) is True
    assert record_call(engine, LedgerEntry(**entry)) is False
    assert len(calls_of(engine, "r")) == 1


def _tight(settings: Settings, **extra: Any) -> Settings:
    # No shrinking (min = max tokens): every call needs its whole worst case.
    return settings.model_copy(update={"llm_max_tokens": 1000, "budget_min_tokens": 1000, **extra})


async def test_coder_that_would_overshoot_is_never_called(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    settings = _tight(settings)
    for agent in ("planner", "executor"):  # long answers: they use all their max_tokens
        fake_groq.script(agent, Reply(prompt_tokens=None, completion_tokens=None))
    budget = Decimal("0.0025")
    async with new_worker(settings=settings):
        run_id, handle = await start_pipeline(client, settings, budget_usd=budget)
        result = await handle.result()
        progress = await handle.query(AgentPipelineWorkflow.progress)
    assert result.status == "BUDGET_EXCEEDED"
    assert fake_groq.count("coder") == 0 and fake_groq.count("finalizer") == 0
    assert [r.agent for r in result.steps] == ["researcher", "planner", "executor"]  # kept
    spent = sum(c.cost_usd for c in calls_of(engine, run_id))
    assert spent == result.spent_usd <= budget
    assert "stopped before coder" in (progress.error or "") and str(spent) in (progress.error or "")
    coder = next(s for s in steps_of(engine, run_id) if s.agent == "coder")
    assert coder.status == "BUDGET_EXCEEDED"


async def test_paused_run_resumes_when_the_budget_is_raised(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker], api: httpx.AsyncClient,
) -> None:  # fmt: skip
    settings = _tight(settings)
    for agent in ("planner", "executor"):
        fake_groq.script(agent, Reply(prompt_tokens=None, completion_tokens=None))
    async with new_worker(settings=settings):
        run_id, handle = await start_pipeline(
            client, settings, budget_usd=Decimal("0.0025"), on_budget_exhausted="wait"
        )

        async def paused() -> bool:
            return (await api.get(f"/runs/{run_id}")).json().get("status") == "WAITING_FOR_BUDGET"

        await assert_eventually(paused)
        assert fake_groq.count("coder") == 0
        lower = await api.post(f"/runs/{run_id}/budget", json={"budget_usd": "0.001"})
        assert lower.status_code == 409 and "above the current" in lower.text
        assert lower.json()["detail"].startswith("new budget must be above")  # no exception name
        over = await api.post(f"/runs/{run_id}/budget", json={"budget_usd": "1000"})
        assert over.status_code == 422 and "MAX_BUDGET_USD" in over.text
        raised = await api.post(f"/runs/{run_id}/budget", json={"budget_usd": "0.01"})
        assert raised.status_code == 200 and raised.json()["budget_usd"] == "0.01"
        result = await handle.result()
    assert result.status == "COMPLETED" and fake_groq.count("coder") == 1
    assert sum(c.cost_usd for c in calls_of(engine, run_id)) <= Decimal("0.01")
    body = (await api.get(f"/runs/{run_id}")).json()
    assert body["status"] == "COMPLETED" and body["budget_usd"] == "0.010000"
    assert (
        await api.post(f"/runs/{run_id}/budget", json={"budget_usd": "0.02"})
    ).status_code == 409


async def test_spend_never_exceeds_budget_across_seeded_random_runs(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    rng = random.Random(42)
    settings = settings.model_copy(update={"llm_max_tokens": 800, "budget_min_tokens": 64})
    runs = []
    async with new_worker(settings=settings):
        for _ in range(8):
            budget = Decimal(str(round(rng.uniform(0.0004, 0.004), 6)))
            run_id, handle = await start_pipeline(client, settings, budget_usd=budget)
            for agent in AGENT_ORDER:  # realistic prompts, random answer lengths up to max_tokens
                completion = None if rng.random() < 0.5 else rng.randint(1, 800)
                fake_groq.script_run(
                    run_id, agent, Reply(prompt_tokens=None, completion_tokens=completion)
                )
            runs.append((run_id, budget, handle))
        results = await asyncio.gather(*(h.result() for _, _, h in runs))
    statuses = [r.status for r in results]
    assert set(statuses) <= {"COMPLETED", "BUDGET_EXCEEDED"} and len(set(statuses)) == 2
    for (run_id, budget, _), result in zip(runs, results, strict=True):
        spent = sum(c.cost_usd for c in calls_of(engine, run_id))
        assert spent == result.spent_usd <= budget, (run_id, spent, budget)


def test_plan_call_property() -> None:
    """Pure property check of the reservation rule over many random cases."""
    pricer = Pricer("groq", {})
    rng = random.Random(7)
    for _ in range(2000):
        left = Decimal(str(round(rng.uniform(0, 0.003), 7)))
        prompt = rng.randint(10, 3000)
        try:
            plan = plan_call(pricer, MODEL, prompt, 2048, left, 64)
        except BudgetExhaustedError:
            continue
        assert plan.reserved_usd <= left and 64 <= plan.max_tokens <= 2048
        # What a provider can bill: the prompt (at most the estimate) and up to max_tokens.
        assert _groq_price(prompt, plan.max_tokens) <= left
    assert estimate_tokens("x" * 300) >= 300 // 4


async def test_cost_report_groups_and_filters(engine: Any, api: httpx.AsyncClient) -> None:
    day1 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    rows = [
        ("run-a", "planner", MODEL, day1, "0.001"),
        ("run-a", "coder", MODEL, day1, "0.004"),
        ("run-b", "coder", "llama-3.1-8b-instant", day1 + timedelta(days=1), "0.0005"),
        ("run-b", "finalizer", "llama-3.1-8b-instant", day1 + timedelta(days=1), "0.0002"),
    ]
    for i, (run, agent, model, at, usd) in enumerate(rows):
        record_call(engine, LedgerEntry(
            run_id=run, workflow_id=run, activity_id=str(i), attempt=1, agent=agent, provider="groq",
            model=model, prompt_tokens=10, completion_tokens=5, cost_pusd=to_pico(Decimal(usd)),
            price_source="seed", usage_source="reported", created_at=at,
        ))  # fmt: skip
    by_agent = (await api.get("/costs", params={"group_by": "agent"})).json()
    assert [(i["key"], i["total_usd"]) for i in by_agent["items"]] == [
        ("coder", "0.0045"),
        ("planner", "0.001"),
        ("finalizer", "0.0002"),
    ]
    assert by_agent["total_usd"] == "0.0057" and by_agent["groups"] == 3
    by_day = (await api.get("/costs", params={"group_by": "day"})).json()
    assert {i["key"]: i["total_usd"] for i in by_day["items"]} == {
        "2026-11-01": "0.005",
        "2026-11-02": "0.0007",
    }
    since = (
        await api.get("/costs", params={"group_by": "model", "since": "2026-11-02T00:00:00Z"})
    ).json()
    assert [(i["key"], i["calls"]) for i in since["items"]] == [("llama-3.1-8b-instant", 2)]
    page = (await api.get("/costs", params={"group_by": "run", "limit": 1, "offset": 1})).json()
    assert [i["key"] for i in page["items"]] == ["run-b"] and page["groups"] == 2
    assert (await api.get("/costs", params={"group_by": "colour"})).status_code == 422
    bad = await api.get(
        "/costs", params={"since": "2026-11-03T00:00:00Z", "until": "2026-11-01T00:00:00Z"}
    )
    assert bad.status_code == 422


async def test_live_reservation_and_budget_warnings(
    client: Client, settings: Settings, fake_groq: FakeGroq, new_worker: Callable[..., Worker],
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    settings = settings.model_copy(update={"llm_max_tokens": 300, "budget_min_tokens": 10})
    fake_groq.script("coder", Reply(delay_s=2))
    caplog.set_level("WARNING", logger="temporalio.workflow")
    async with new_worker(settings=settings):
        run_id, handle = await start_pipeline(client, settings, budget_usd=Decimal("0.0008"))
        await assert_eventually(lambda: fake_groq.count("coder") == 1)
        live = (await api.get(f"/runs/{run_id}/costs")).json()
        progress = await handle.query(AgentPipelineWorkflow.progress)
        await handle.result()
    # While the Coder's call is in flight its worst case is reserved, on top of settled spend.
    assert Decimal(live["reserved_usd"]) > 0
    assert Decimal(live["total_usd"]) + Decimal(live["reserved_usd"]) <= Decimal("0.0008")
    assert progress.spent_usd == Decimal(live["total_usd"]) and progress.budget_usd == Decimal(
        "0.0008"
    )
    warnings = [r for r in caplog.records if r.getMessage().startswith("budget.threshold")]
    percents = [getattr(r, "percent", None) for r in warnings]
    assert 50 in percents and len(percents) == len(set(percents))
