"""Dry-run: nothing a side-effect tool does escapes; what it would have done is recorded and shown."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, SQLModel, func, select
from temporalio.worker import Worker

from activities.tools import ToolContext
from activities.tools.builtin import build_tools
from crewline.settings import Settings
from records.runs import intents_of
from records.tables import Intent
from tests.conftest import assert_eventually, run_cli
from tests.fakes import FakeGroq


def _rows_outside_intents(engine: Any) -> dict[str, int]:
    with Session(engine) as session:
        counts = {
            table.name: session.exec(select(func.count()).select_from(table)).one()  # type: ignore[call-overload]
            for table in SQLModel.metadata.sorted_tables
            if table.name != Intent.__tablename__
        }
    return {name: count for name, count in counts.items() if count}


async def test_every_side_effect_tool_only_records_an_intent(
    settings: Settings, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = build_tools(settings, engine, None)
    side_effects = [spec for spec in registry.specs() if spec.side_effects]
    assert side_effects, "no side-effect tool registered: nothing to prove"

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry-run tool opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    ctx = ToolContext(run_id="run-dry", dry_run=True, agent="coder")
    for n, spec in enumerate(side_effects):
        params = list(inspect.signature(spec.fn).parameters)[1:]  # after the context
        args = {name: f"{name}-value" for name in params}
        ctx.intent_seq = n
        done = await registry.dispatch(ctx, spec.name, **args)
        assert done.ok and done.text.startswith("(dry run: nothing was done)"), done.text
    monkeypatch.undo()
    assert not settings.artifacts_dir.exists() or not any(settings.artifacts_dir.rglob("*"))
    assert _rows_outside_intents(engine) == {}
    recorded = intents_of(engine, "run-dry")
    assert [i.tool for i in recorded] == [s.name for s in side_effects]
    assert [i["tool"] for i in ctx.intents] == [s.name for s in side_effects]


async def test_dry_run_through_the_api_and_cli(
    api: httpx.AsyncClient,
    api_url: str,
    new_worker: Callable[..., Worker],
    fake_groq: FakeGroq,
    settings: Settings,
    engine: Any,
    tmp_path: Path,
) -> None:
    async with new_worker():
        started = await api.post("/runs", json={"query": "Build a snake game", "dry_run": True})
        assert started.status_code == 202
        run_id = started.json()["run_id"]

        async def done() -> bool:
            return (await api.get(f"/runs/{run_id}")).json()["status"] == "COMPLETED"

        await assert_eventually(done, timeout=60)
        cli = await run_cli("run", "--dry-run", "Build a snake game", api_url=api_url, cwd=tmp_path)
    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["dry_run"] is True and run["artifacts"] == []
    [intent] = run["intents"]
    assert intent["tool"] == "write_file" and intent["agent"] == "coder"
    assert intent["summary"] == "would write snake.py (15 bytes)"
    detail = (await api.get(intent["url"])).json()
    assert detail["args"] == {"path": "snake.py", "content": "print('snake')\n"}
    assert not (settings.artifacts_dir / run_id).exists()
    assert (await api.get(f"/runs/{run_id}/intents/999999")).status_code == 404
    assert cli.returncode == 0, cli.stderr
    assert "Dry run — nothing was written" in cli.stdout
    assert "would write snake.py (15 bytes)" in cli.stdout
