"""`POST /runs` latency under concurrent clients, against `crewline api` in its own process.

A separate process, as in production: the load generator must not share a GIL or an event loop
with the server it measures. Runs go to a task queue no worker polls, so this measures the API
path (validate, write the row, start the workflow), not the pipeline.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.harness import BENCH_AUTH, BENCH_KEY, free_port, percentiles
from crewline.settings import Settings


def _env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "LLM_", "CREWLINE_"))}
    env.update(
        LLM_PROVIDER="scripted",
        CREWLINE_DATA_DIR=str(settings.data_dir.resolve()),
        TEMPORAL_ADDRESS=settings.temporal_address,
        CREWLINE_TASK_QUEUE="bench-api-only",
        API_PORT=str(port),
        LOG_LEVEL="WARNING",
        CREWLINE_ADMIN_KEY=BENCH_KEY,
        KEY_MAX_RUNS_IN_FLIGHT="1000000",
        KEY_RUNS_PER_MINUTE="1000000",
    )
    return env


async def post_latency(settings: Settings, clients: int, per_client: int) -> dict[str, float]:
    port = free_port()
    crewline = str(Path(sys.executable).parent / "crewline")
    api = subprocess.Popen(
        [crewline, "api"], env=_env(settings, port), cwd=settings.data_dir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    latencies: list[float] = []
    try:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30, headers=BENCH_AUTH
        ) as http:
            for _ in range(200):  # wait for the API to listen
                try:
                    await http.post("/runs", json={"query": "warm-up"})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)

            async def client() -> None:
                for _ in range(per_client):
                    start = time.perf_counter()
                    response = await http.post("/runs", json={"query": "Build a snake game"})
                    latencies.append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()

            await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        api.terminate()
        api.wait(timeout=20)
    return percentiles(latencies)
