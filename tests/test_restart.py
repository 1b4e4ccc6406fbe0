"""The embedded Temporal server stopped and started on the same data file mid-run loses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.client import Client

from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, DevServer
from records.runs import get_run
from tests.conftest import assert_eventually, free_port, start_pipeline
from tests.fakes import FakeGroq, Reply
from tests.procs import WorkerProcesses
from workflows.pipeline import AgentPipelineWorkflow


async def test_server_restart_mid_run_completes(
    settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    server = DevServer(tmp_path / "temporal.db", port=free_port(), ui_port=free_port())
    await server.start()
    settings = settings.model_copy(update={"temporal_address": server.address})
    fake_groq.script("planner", Reply(delay_s=3))
    try:
        with WorkerProcesses(settings, tmp_path) as workers:
            workers.spawn()
            client = await Client.connect(server.address, data_converter=DATA_CONVERTER)
            run_id, _ = await start_pipeline(client, settings)
            await assert_eventually(lambda: fake_groq.count("planner") == 1, timeout=30)
            server.stop()  # mid-planner: the whole history lives only in temporal.db now
            await server.start()
            client = await Client.connect(server.address, data_converter=DATA_CONVERTER)
            handle = client.get_workflow_handle_for(AgentPipelineWorkflow.run, run_id)
            result = await handle.result()
    finally:
        server.stop()
    assert result.status == "COMPLETED"
    assert fake_groq.count("researcher") == 1  # finished before the restart: not run again
    run = get_run(engine, run_id)
    assert run is not None and run.status == "COMPLETED"
