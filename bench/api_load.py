"""`POST /runs` latency under concurrent clients, against the real API app served by uvicorn.

The API runs in its own thread and event loop (as it would in its own process), so the load
generator does not share a loop with the server it measures. Runs go to a task queue no worker
polls: this measures the API path (validate, write the row, start the workflow), not the pipeline.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import uvicorn

from api.app import create_app
from bench.harness import free_port, percentiles
from crewline.settings import Settings
from crewline.stack import _ApiServer


def _serve(server: uvicorn.Server) -> None:
    asyncio.run(server.serve())


async def post_latency(settings: Settings, clients: int, per_client: int) -> dict[str, float]:
    port = free_port()
    api_settings = settings.model_copy(update={"task_queue": "bench-api-only"})
    server = _ApiServer(
        uvicorn.Config(create_app(api_settings), port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=_serve, args=(server,), daemon=True)
    thread.start()
    while not server.started:
        await asyncio.sleep(0.05)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as http:
        await http.post("/runs", json={"query": "warm-up"})

        async def client() -> None:
            for _ in range(per_client):
                start = time.perf_counter()
                response = await http.post("/runs", json={"query": "Build a snake game"})
                latencies.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()

        await asyncio.gather(*(client() for _ in range(clients)))
    server.should_exit = True
    thread.join(timeout=10)
    return percentiles(latencies)
