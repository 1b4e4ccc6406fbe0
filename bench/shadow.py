"""`python -m bench.shadow`: what a shadow adds to its primary's latency (should be nothing).

The real API (POST /runs, which starts the shadow after answering), an active and a candidate
version each served by a `crewline worker --version` process, the scripted provider with a fixed
delay. Runs alternate between shadowing off and on (rate 1.0: every run shadowed), one at a
time, so noise hits both alike; each run's latency is POST → COMPLETED as the API reports it.
Medians over --runs per arm. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn

from bench.harness import BENCH_AUTH, free_port, percentiles
from bench.versions import two_versions
from cli.server import create_app
from cli.stack import _ApiServer
from versioning import shadow


async def _one(http: httpx.AsyncClient) -> float:
    start = time.perf_counter()
    run_id = (await http.post("/runs", json={"query": "Build a snake game"})).json()["run_id"]
    while (await http.get(f"/runs/{run_id}")).json()["status"] != "COMPLETED":
        await asyncio.sleep(0.01)
    return time.perf_counter() - start


async def main(runs: int, delay_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with two_versions(Path(tmp), delay_s) as (stack, _, v2):
            # A real HTTP server: the client has its answer before background tasks run.
            port = free_port()
            app = create_app(stack.settings, client=stack.client, engine=stack.engine)
            server = _ApiServer(uvicorn.Config(app, port=port, log_level="warning"))
            serving = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.05)
            off, on = [], []
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=BENCH_AUTH
            ) as http:
                await _one(http)  # warm-up
                for _ in range(runs):
                    shadow.set_config(stack.engine, None, 0.0, None)
                    off.append(await _one(http))
                    shadow.set_config(stack.engine, v2, 1.0, None)
                    on.append(await _one(http))
            server.should_exit = True
            await serving
    p_off, p_on = percentiles(off), percentiles(on)
    print(
        f"primary latency, d={delay_s}s per step, {runs} runs per arm (interleaved):\n"
        f"  shadowing off  p50 {p_off['p50'] * 1000:.0f} ms  p95 {p_off['p95'] * 1000:.0f} ms\n"
        f"  every run shadowed  p50 {p_on['p50'] * 1000:.0f} ms  p95 {p_on['p95'] * 1000:.0f} ms\n"
        f"  ratio of medians {statistics.median(on) / statistics.median(off):.3f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.3)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.delay))
    sys.stdout.flush()
    os._exit(0)
