"""Drive the real crewline pipeline on the embedded stack; the measurements shared by all systems.

crewline here is the real thing: the dev server from the wheel persisted to a file, a worker
built by `build_worker` (the production worker), the real workflow and activities with their
SQLite writes; only the LLM is the `scripted` provider with a fixed delay d.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client

from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, DevServer
from workers.main import build_worker
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

# The admin key of every benchmark API (a throwaway, local to the run).
BENCH_KEY = "bench-admin-key-0123456789"
BENCH_AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}

Runner = Callable[[], Awaitable[object]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p95": pick(0.95), "p99": pick(0.99)}


@dataclass
class Stack:
    server: DevServer
    client: Client
    settings: Settings
    engine: Any

    @asynccontextmanager
    async def worker(self, delay_s: float) -> AsyncIterator[None]:
        settings = self.settings.model_copy(update={"scripted_delay_s": delay_s})
        async with build_worker(self.client, settings, engine=self.engine, search_backend=None):
            yield

    async def run_once(self) -> str:
        """One pipeline run to completion (at the d of the running worker); its run id."""
        run_id = f"bench-{uuid.uuid4().hex[:12]}"
        await self.client.execute_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=run_id, query="Build a snake game"),
            id=run_id,
            task_queue=self.settings.task_queue,
        )
        return run_id


@asynccontextmanager
async def embedded_stack(
    workdir: Path, *, dynamic_config: dict[str, str] | None = None,
    sqlite_pragmas: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:  # fmt: skip
    server = DevServer(
        workdir / "temporal.db",
        port=free_port(),
        ui_port=free_port(),
        dynamic_config=dynamic_config,
        sqlite_pragmas=sqlite_pragmas,
    )
    await server.start()
    try:
        settings = Settings(
            LLM_PROVIDER="scripted",
            CREWLINE_DATA_DIR=workdir / "data",
            TEMPORAL_ADDRESS=server.address,
            CREWLINE_TASK_QUEUE=f"bench-{uuid.uuid4().hex[:6]}",
            SEARCH_BACKEND="none",
            RESEARCH_MODE="never",
            LOG_LEVEL="WARNING",
            CREWLINE_ADMIN_KEY=SecretStr(BENCH_KEY),
            # The benchmarks start more runs than a key may by default; the limit check still runs.
            KEY_MAX_RUNS_IN_FLIGHT=1_000_000,
            KEY_RUNS_PER_MINUTE=1_000_000,
            _env_file=None,  # type: ignore[call-arg]
        )
        client = await Client.connect(server.address, data_converter=DATA_CONVERTER)
        yield Stack(server, client, settings, make_engine(settings.resolved_database_url))
    finally:
        server.stop()


async def sequential_overheads(runner: Runner, runs: int, delay_s: float) -> list[float]:
    """Per-step orchestration overhead of each run, in ms: (end-to-end - 5*d) / 5."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        await runner()
        out.append(((time.perf_counter() - start) - 5 * delay_s) / 5 * 1000)
    return out


async def throughput(runner: Runner, in_flight: int, total: int) -> float:
    """Five-step pipelines completed per second with `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await runner()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - start)


async def burst(runner: Runner, count: int, pids: list[int]) -> tuple[float, dict[int, float]]:
    """Start `count` runs at once; wall time until all finished, and peak RSS per pid (MB)."""
    peak = dict.fromkeys(pids, 0.0)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            for pid in pids:
                peak[pid] = max(peak[pid], rss_mb(pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(count)))
    wall = time.perf_counter() - start
    done.set()
    await sampler
    return wall, peak
