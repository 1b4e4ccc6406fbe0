"""End to end: a provider that echoes the key it was sent leaves no trace of it anywhere —
not in either log format, the workflow history, the database or any API answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlmodel import SQLModel
from temporalio.client import Client
from temporalio.worker import Worker

from crewline.logging import configure_logging
from crewline.settings import Settings
from tests.conftest import ADMIN_KEY, assert_eventually
from tests.fakes import FakeGroq, Status


def _database_text(engine: Any, settings: Settings) -> str:
    with engine.connect() as conn:
        rows = [str(conn.execute(t.select()).all()) for t in SQLModel.metadata.sorted_tables]
    files = [settings.data_dir / n for n in ("crewline.db", "crewline.db-wal")]
    raw = [f.read_bytes().decode("latin-1") for f in files if f.exists()]
    return "\n".join(rows + raw)


@pytest.mark.parametrize("as_json", [False, True])
async def test_a_provider_echoing_the_key_leaves_no_trace(
    as_json: bool,
    api: httpx.AsyncClient,
    client: Client,
    settings: Settings,
    engine: Any,
    fake_groq: FakeGroq,
    new_worker: Callable[..., Worker],
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert settings.groq_api_key is not None
    key = settings.groq_api_key.get_secret_value()
    configure_logging("DEBUG", as_json, redact=settings.secrets())
    try:
        fake_groq.script("planner", Status(401, message="Invalid API Key: {authorization}"))
        async with new_worker():
            started = await api.post("/runs", json={"query": "Build a snake game"})
            run_id = started.json()["run_id"]

            async def failed() -> bool:
                return (await api.get(f"/runs/{run_id}")).json()["status"] == "FAILED"

            await assert_eventually(failed, timeout=30)
        answers = [
            (await api.get(url)).text
            for url in (f"/runs/{run_id}", f"/runs/{run_id}/costs", "/runs", "/costs", "/keys")
        ]
        history = (await client.get_workflow_handle(run_id).fetch_history()).to_json()
        logs = "".join(capfd.readouterr())
    finally:
        configure_logging()
    # The provider did get the key and echoed it: the test is not vacuous.
    planner = [r for r in fake_groq.requests if r.agent == "planner"]
    assert planner, "the planner never called the provider"
    run = (await api.get(f"/runs/{run_id}")).json()
    error = next(s["error"] for s in run["steps"] if s["agent"] == "planner")
    assert "GROQ_API_KEY rejected (401)" in error and "[redacted]" in error
    assert "GROQ_API_KEY rejected (401)" in logs, "the failure was not logged at all"
    sinks = {"logs": logs, "history": history, "database": _database_text(engine, settings)}
    sinks |= {f"answer {i}": a for i, a in enumerate(answers)}
    for where, text in sinks.items():
        assert key not in text, f"the provider key is in the {where}"
        assert ADMIN_KEY not in text, f"the admin key is in the {where}"
