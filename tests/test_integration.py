"""End to end on the real dev server: real worker, real `groq` SDK, fake Groq on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from crewline.settings import Settings
from records.runs import artifacts_of, get_run, steps_of
from records.statuses import AGENTS as AGENT_ORDER
from tests.conftest import start_pipeline
from tests.fakes import NO_CHECKS, FakeGroq, Status


async def test_run_completes_with_five_steps_each_called_once(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert result.final_answer == "FINAL-ANSWER: run python snake.py" + NO_CHECKS
    assert {a: fake_groq.count(a) for a in AGENT_ORDER} == dict.fromkeys(AGENT_ORDER, 1)
    # Each agent saw what it needs from the ones before it, through the real SDK.
    planner_prompt = fake_groq.calls("planner")[0].body["messages"][1]["content"]
    assert "RESEARCH-NOTES" in planner_prompt
    coder_prompt = fake_groq.calls("coder")[0].body["messages"][1]["content"]
    assert "PLAN: 1. grid" in coder_prompt and "ARCH: snake.py" in coder_prompt
    finalizer_prompt = fake_groq.calls("finalizer")[0].body["messages"][1]["content"]
    assert "- snake.py" in finalizer_prompt
    assert fake_groq.calls("coder")[0].body["model"] == "llama-3.3-70b-versatile"

    steps = steps_of(engine, run_id)
    assert [s.agent for s in steps] == list(AGENT_ORDER)
    assert all(s.status == "COMPLETED" and s.attempt == 1 for s in steps)
    assert all((s.prompt_tokens, s.completion_tokens) == (100, 50) for s in steps)
    run = get_run(engine, run_id)
    assert run is not None and run.status == "COMPLETED" and run.final_answer == result.final_answer
    [artifact] = artifacts_of(engine, run_id)
    assert artifact.path == "snake.py"
    assert (settings.artifacts_dir / run_id / "snake.py").read_text() == "print('snake')\n"


async def test_bad_key_fails_fast_naming_the_variable(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    fake_groq.script("researcher", Status(401, message="Invalid API Key"))
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    message = str(info.value.cause)
    assert "researcher failed" in message and "GROQ_API_KEY rejected (401)" in message
    assert settings.groq_api_key is not None
    assert settings.groq_api_key.get_secret_value() not in message
    assert fake_groq.count("researcher") == 1 and fake_groq.count("planner") == 0
    run = get_run(engine, run_id)
    assert run is not None and run.status == "FAILED" and run.failed_agent == "researcher"
    assert "GROQ_API_KEY" in (run.error or "")


async def test_transient_errors_are_retried_by_temporal(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    fake_groq.script("planner", Status(503), Status(500))
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED"
    assert fake_groq.count("planner") == 3  # the SDK did not retry on its own
    planner = next(s for s in steps_of(engine, run_id) if s.agent == "planner")
    assert planner.attempt == 3 and planner.status == "COMPLETED" and planner.error is None
