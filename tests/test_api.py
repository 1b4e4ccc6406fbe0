"""The HTTP API against the real dev server and a real worker (fake Groq at the network edge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from cli.server import create_app
from crewline.settings import Settings
from tests.conftest import AUTH, assert_eventually
from tests.fakes import NO_CHECKS, FakeGroq, Hang

pytestmark = pytest.mark.both_databases


async def _finished(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal body
        body = (await api.get(f"/runs/{run_id}")).json()
        return body["status"] in {"COMPLETED", "FAILED", "CANCELLED"}

    await assert_eventually(done, timeout=30)
    return body


async def test_post_run_202_then_completed_with_steps_and_artifacts(
    api: httpx.AsyncClient, new_worker: Callable[..., Worker]
) -> None:
    async with new_worker():
        response = await api.post(
            "/runs", json={"query": "Build a snake game", "budget_usd": "0.50"}
        )
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status"] == "QUEUED" and accepted["run_id"].startswith("run-")
        assert accepted["links"]["temporal_ui"].endswith(f"/workflows/{accepted['run_id']}")
        run = await _finished(api, accepted["run_id"])
    assert run["status"] == "COMPLETED"
    assert run["budget_usd"] == "0.500000"
    assert [s["agent"] for s in run["steps"]] == [
        "researcher",
        "planner",
        "executor",
        "coder",
        "finalizer",
    ]
    assert run["steps"][1]["output"] == "PLAN: 1. grid 2. snake 3. food"
    assert run["steps"][1]["prompt_tokens"] == 100 and run["steps"][1]["attempt"] == 1
    assert run["final_answer"] == "FINAL-ANSWER: run python snake.py" + NO_CHECKS
    [artifact] = run["artifacts"]
    download = await api.get(artifact["url"])
    assert download.status_code == 200 and download.text == "print('snake')\n"
    listed = await api.get(f"/runs/{run['run_id']}/artifacts")
    assert [a["path"] for a in listed.json()] == ["snake.py"]
    page = (await api.get("/runs", params={"status": "COMPLETED"})).json()
    assert page["total"] == 1 and page["items"][0]["run_id"] == run["run_id"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": ""}, "query must not be empty"),
        ({"query": "   "}, "query must not be empty"),
        ({"query": "x" * 4001}, "at most 4000 characters"),
        ({}, "Field required"),
        ({"query": "ok", "budget_usd": "-1"}, "greater than 0"),
        ({"query": "ok", "budget_usd": "1000000"}, "above the maximum of 100 (MAX_BUDGET_USD)"),
    ],
)
async def test_bad_requests_are_422_and_start_nothing(
    api: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await api.post("/runs", json=body)
    assert response.status_code == 422
    assert fragment in response.text
    assert (await api.get("/runs")).json()["total"] == 0


async def test_unknown_run_is_404(api: httpx.AsyncClient) -> None:
    for path in ("/runs/run-nope", "/runs/run-nope/artifacts", "/runs/run-nope/artifacts/a.py"):
        response = await api.get(path)
        assert response.status_code == 404 and "run-nope" in response.json()["detail"]
    assert (await api.post("/runs/run-nope/cancel")).status_code == 404
    assert (await api.get("/runs", params={"status": "BOGUS"})).status_code == 422


async def test_idempotency_key_starts_one_run(api: httpx.AsyncClient, client: Client) -> None:
    headers = {"Idempotency-Key": "k-123"}
    first = await api.post("/runs", json={"query": "Build a snake game"}, headers=headers)
    second = await api.post("/runs", json={"query": "Build a snake game"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]
    assert (await api.get("/runs")).json()["total"] == 1
    other = await api.post("/runs", json={"query": "something else"}, headers=headers)
    assert other.status_code == 409
    await client.get_workflow_handle(first.json()["run_id"]).terminate("test cleanup")


async def test_cancel_keeps_finished_steps(
    api: httpx.AsyncClient, fake_groq: FakeGroq, new_worker: Callable[..., Worker]
) -> None:
    fake_groq.script("executor", Hang(30))
    async with new_worker():
        run_id = (await api.post("/runs", json={"query": "Build a snake game"})).json()["run_id"]
        await assert_eventually(lambda: fake_groq.count("executor") == 1)
        response = await api.post(f"/runs/{run_id}/cancel")
        assert response.status_code == 202
        run = await _finished(api, run_id)
        assert (await api.post(f"/runs/{run_id}/cancel")).status_code == 409
    assert run["status"] == "CANCELLED"
    statuses = {s["agent"]: s["status"] for s in run["steps"]}
    assert statuses == {"researcher": "COMPLETED", "planner": "COMPLETED", "executor": "CANCELLED"}
    assert run["steps"][1]["output"].startswith("PLAN:")


async def test_no_provider_configured_is_503_with_what_to_set(
    client: Client, settings: Settings, engine: Any
) -> None:
    bare = settings.model_copy(update={"llm_provider": None, "groq_api_key": None})
    app = create_app(bare, client=client, engine=engine)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost", headers=AUTH
        ) as http,
    ):
        response = await http.post("/runs", json={"query": "Build a snake game"})
        health = await http.get("/health")
    assert response.status_code == 503
    assert (
        "GROQ_API_KEY" in response.json()["detail"]
        and "LLM_PROVIDER=scripted" in response.json()["detail"]
    )
    assert health.status_code == 503 and health.json()["llm"]["ok"] is False


async def test_health_reports_parts(
    api: httpx.AsyncClient, fake_groq: FakeGroq, new_worker: Any
) -> None:
    alone = await api.get("/health")  # nothing serves runs: down, and it says why
    assert alone.status_code == 503
    assert "no worker polls task queue" in alone.json()["workers"]["error"]
    async with new_worker():
        await assert_eventually(lambda: _healthy(api), timeout=20)
        response = await api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"]["ok"] and body["temporal"]["ok"]
    # The provider was probed (the fake answers, if not with a model list): reachable.
    assert body["llm"] == {"ok": True, "provider": "groq", "url": fake_groq.base_url}


async def _healthy(api: httpx.AsyncClient) -> bool:
    return (await api.get("/health")).status_code == 200


async def test_temporal_down_is_503_and_leaves_no_row(settings: Settings, engine: Any) -> None:
    unreachable = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    app = create_app(unreachable, engine=engine)  # the API starts even while Temporal is down
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost", headers=AUTH
        ) as http,
    ):
        response = await http.post("/runs", json={"query": "Build a snake game"})
        listed = await http.get("/runs")
        health = await http.get("/health")
    assert health.status_code == 503 and health.json()["temporal"]["ok"] is False
    assert response.status_code == 503 and "127.0.0.1:1" in response.json()["detail"]
    assert listed.json()["total"] == 0


async def test_health_probes_the_provider_and_names_where_it_is(
    client: Client, settings: Settings, engine: Any
) -> None:
    down = settings.model_copy(update={"groq_base_url": "http://127.0.0.1:1"})
    app = create_app(down, client=client, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            answer = await http.get("/health")
    assert answer.status_code == 503
    llm = answer.json()["llm"]
    assert llm["ok"] is False and "unreachable at http://127.0.0.1:1" in llm["error"]
    assert "gsk_" not in answer.text  # the key never shows
