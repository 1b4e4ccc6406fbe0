"""Regression tests for what an attacker, a slow page and a first-time operator found (issue
"Safe to hand to a team"): each reproduces the finding and checks it no longer holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.worker import Worker

from cli.server import create_app
from crewline.settings import Settings
from dashboard import render
from records.ledger import calls_of
from tests.conftest import ADMIN_KEY, assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Reply

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
PATHOLOGICAL_CPP = "```cpp\na" + " " * 6000 + "!\n```\n"


# ---- 2. one agent output must not freeze the API -------------------------------------------------
def test_code_that_would_stall_a_lexer_is_shown_plain() -> None:
    """The 6 KB C++ block that took Pygments 6.5 s: a line over the limit is not highlighted."""
    shown = render.markdown(PATHOLOGICAL_CPP)
    assert "not highlighted: a line over" in shown and "<pre>a" in shown
    huge = render.markdown("word " * 70_000)  # over MARKDOWN_MAX_CHARS
    assert "shown as plain text: 350,000 characters" in huge


def test_a_lexer_out_of_time_gives_up_for_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "HIGHLIGHT_SECONDS", -1.0)  # already past its deadline
    source = "\n".join(f"int v{i} = {i};" for i in range(200))
    shown = render.code(source, "cpp")
    assert "not highlighted: took over" in shown and "int v199 = 199;" in shown
    monkeypatch.undo()
    assert 'class="code"' in render.code(source, "cpp") and "took over" not in render.code(
        source, "cpp"
    )


# ---- 6. a secret the provider echoes is never stored or shown ------------------------------------
async def test_a_key_echoed_in_a_successful_answer_is_stored_redacted(
    api: httpx.AsyncClient,
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    key = settings.groq_api_key.get_secret_value()  # type: ignore[union-attr]
    echoed = f"Authorization: Bearer {key}\nDone: the snake game is ready."
    fake_groq.responder = lambda agent, body: echoed if agent in ("planner", "finalizer") else None
    async with new_worker():
        started = await api.post("/runs", json={"query": "Build a snake game"})
        run_id = started.json()["run_id"]

        async def ended() -> bool:
            return (await api.get(f"/runs/{run_id}")).json()["status"] == "COMPLETED"

        await assert_eventually(ended, timeout=60)
    shown = (await api.get(f"/runs/{run_id}")).text
    assert "Bearer [redacted]" in shown, shown[:400]
    history = await client.get_workflow_handle(run_id).fetch_history()
    with engine.connect() as conn:
        stored = [
            json.dumps([list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {t}"))])
            for t in ("run", "step", "turn", "tool_call", "artifact", "intent")
        ]
    for where, content in {"GET /runs/{id}": shown, "history": history.to_json(),
                           "database": "".join(stored)}.items():  # fmt: skip
        assert key not in content, where


# ---- 3. /metrics does not grow with what clients send --------------------------------------------
async def test_metrics_count_unknown_methods_as_one_label_and_only_after_the_host_check(
    api: httpx.AsyncClient,
) -> None:
    before = (await api.get("/metrics")).text
    for i in range(200):
        await api.request(f"X{i:03d}" + "M" * 500, "/runs")
    for _ in range(20):
        await api.get("/runs", headers={"Host": "evil.example"})
    after = (await api.get("/metrics")).text
    assert len(after) - len(before) < 4_000, len(after) - len(before)
    assert "X000" not in after  # refused by the transport checks, or counted as "other"
    assert 'status="400"' not in after  # the foreign Host was refused before it was counted


# ---- 4. the per-key in-flight limit holds under a burst ------------------------------------------
@pytest.mark.both_databases
async def test_sixty_concurrent_posts_from_a_fresh_key_start_at_most_its_limit(
    client: Client, settings: Settings, engine: Any
) -> None:
    limited = settings.model_copy(update={"key_max_inflight": 20, "key_runs_per_minute": 1000})
    app = create_app(limited, client=client, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            made = await http.post("/keys", json={"name": "burst", "scope": "run"}, headers=AUTH)
            key = {"Authorization": f"Bearer {made.json()['key']}"}
            answers = await asyncio.gather(*(
                http.post("/runs", json={"query": f"Build a snake game {i}"}, headers=key)
                for i in range(60)
            ))  # fmt: skip
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 20 and codes.count(429) == 40, codes


# ---- 5. an uploaded bundle is code: up does not run it unless the operator allows it ------------
def test_up_does_not_start_workers_for_uploaded_versions_unless_allowed(
    settings: Settings, engine: Any, tmp_path: Path
) -> None:
    from cli.stack import _plan
    from tests.snapshots import checkout
    from versioning import bundle, deployment, registry, shadow

    def version(name: str, source: str) -> str:
        made = bundle.collect(checkout(tmp_path / name, f"Version {name}."), settings)
        bundle.write(made, settings.snapshots_dir)
        registry.register(engine, made, source=source)
        return made.id

    mine, theirs = version("mine", "/srv/checkout"), version("theirs", registry.UPLOADED)
    shadow.set_config(engine, theirs, 0.05, "test")
    state = deployment.DeploymentState(mine, None, b"", True)
    assert _plan(state, settings, engine).serve == [mine]  # the uploaded candidate is left out
    allowed = settings.model_copy(update={"allow_uploaded_bundles": True})
    assert _plan(state, allowed, engine).serve == [mine, theirs]
    uploaded_active = deployment.DeploymentState(theirs, None, b"", True)
    with pytest.raises(RuntimeError, match="ALLOW_UPLOADED_BUNDLES=true"):
        _plan(uploaded_active, settings, engine)


# ---- 7. nonsensical usage or an unknown model name is classified, not retried at worst case ----
async def test_nonsensical_usage_and_a_dated_model_name_are_charged_once_with_a_reason(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any,
    new_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    fake_groq.script("planner", Reply(text="1. Plan it.", prompt_tokens=-5_000_000))
    fake_groq.script("executor", Reply(text="No gaps.", model="llama-3.3-70b-versatile-2026-12"))
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, budget_usd=Decimal("0.01"))
        result = await handle.result()
    assert result.status == "COMPLETED", result
    rows = {r.agent: r for r in calls_of(engine, run_id)}
    assert len(calls_of(engine, run_id)) == len(fake_groq.calls(run_id=run_id))  # none retried
    assert rows["planner"].usage_source == "estimated" and rows["planner"].prompt_tokens > 0
    assert rows["executor"].usage_source == "reported"
    assert "priced as llama-3.3-70b-versatile" in rows["executor"].price_source
    assert not any(r.cut_off_by == "worker_lost" for r in rows.values())
