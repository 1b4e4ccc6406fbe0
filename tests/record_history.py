"""Record a pipeline history for the replay tests: `python -m tests.record_history NAME`.

Runs one pipeline (completed, failed at an agent with `--fail AGENT`, or stopped for budget with
`--budget USD`) on a throwaway dev server
with the fake Groq server, and writes its history to `tests/histories/NAME.json`. Re-record only
when a workflow change is *meant* to be incompatible (and version it); otherwise the replay test
is what tells you a change broke running workflows.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from activities.tools.search import SearchHit
from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, dev_server_path
from tests.fakes import Call, FakeGroq, FakeSearch, Reply, Status
from workers.main import build_worker
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

HISTORIES = Path(__file__).parent / "histories"


async def record(name: str, fail: str | None, budget: str | None) -> Path:
    fake = FakeGroq().start()
    # The researcher searches, then writes its notes: a recorded run has the loop's shape.
    fake.script("researcher", Reply(calls=[Call("web_search", {"query": "snake game"})]))
    if fail:
        fake.script(fail, Status(401, message="Invalid API Key"))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(), data_converter=DATA_CONVERTER
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                LLM_PROVIDER="groq",
                GROQ_API_KEY="gsk_recording",
                GROQ_BASE_URL=fake.base_url,
                CREWLINE_DATA_DIR=Path(tmp),
                SEARCH_BACKEND="none",
                _env_file=None,
            )
            run_id = f"run-{name}-{uuid.uuid4().hex[:6]}"
            hits = [SearchHit(title="Snake", url="https://example.org/snake", snippet="a game")]
            worker = build_worker(
                env.client,
                settings,
                engine=make_engine(settings.resolved_database_url),
                search_backend=FakeSearch(hits),
            )
            async with worker:
                handle = await env.client.start_workflow(
                    AgentPipelineWorkflow.run,
                    PipelineInput(
                        run_id=run_id,
                        query="Build a snake game",
                        budget_usd=Decimal(budget) if budget else None,
                    ),
                    id=run_id,
                    task_queue=settings.task_queue,
                )
                try:
                    await handle.result()
                except Exception:
                    if not fail:
                        raise
                history = await handle.fetch_history()
        out = HISTORIES / f"{name}.json"
        out.write_text(history.to_json())
        return out
    finally:
        await env.shutdown()
        fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--fail", default=None)
    parser.add_argument("--budget", default=None, help="USD; small enough to stop the run")
    args = parser.parse_args()
    print(asyncio.run(record(args.name, args.fail, args.budget)))
    import os

    os._exit(0)
