"""Crash-resume: a worker SIGKILLed mid-step loses nothing and repeats nothing it finished."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from temporalio.client import Client

from crewline.settings import Settings
from records.ledger import calls_of
from records.runs import steps_of
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import FakeGroq, Hang
from tests.procs import WorkerProcesses


async def test_worker_killed_during_coder_resumes_on_new_worker(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    # Absolute data dir: the worker runs with cwd = data dir.
    fake_groq.script("coder", Hang(60))  # the first coder call never answers
    with WorkerProcesses(settings, tmp_path) as workers:
        first = workers.spawn()
        run_id, handle = await start_pipeline(client, settings)
        await assert_eventually(lambda: fake_groq.count("coder") == 1, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        workers.spawn()
        result = await handle.result()
    assert result.status == "COMPLETED"
    counts = {
        a: fake_groq.count(a) for a in ("researcher", "planner", "executor", "coder", "finalizer")
    }
    assert counts == {"researcher": 1, "planner": 1, "executor": 1, "coder": 2, "finalizer": 1}
    steps = steps_of(engine, run_id)
    assert len(steps) == 5 and len({s.agent for s in steps}) == 5
    coder = next(s for s in steps if s.agent == "coder")
    assert coder.status == "COMPLETED" and coder.attempt == 2
    # The killed attempt's request reached the provider, which may bill it: it is charged at its
    # reservation's worst case (settled when attempt 2 started), and nothing is charged twice.
    ledger = calls_of(engine, run_id)
    assert sorted((c.agent, c.attempt) for c in ledger) == sorted(
        [
            ("researcher", 1), ("planner", 1), ("executor", 1),
            ("coder", 1), ("coder", 2), ("finalizer", 1),
        ]
    )  # fmt: skip
    lost = next(c for c in ledger if (c.agent, c.attempt) == ("coder", 1))
    assert (lost.state, lost.usage_source, lost.cut_off_by) == (
        "settled",
        "estimated",
        "worker_lost",
    )
    assert lost.completion_tokens == fake_groq.calls("coder")[0].body["max_tokens"]
