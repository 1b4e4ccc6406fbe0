"""`python -m bench.telemetry`: what tracing and metrics cost per step, measured side by side.

Two arms on one embedded server, interleaved round by round so noise hits both alike:
- off: no tracing (the default without OTEL_EXPORTER_OTLP_ENDPOINT);
- on: tracing on — Temporal's interceptors on client and worker, crewline's LLM and tool spans —
  exported over OTLP/HTTP by the batch processor to a sink in another process, and the worker's
  /metrics endpoint scraped every 15 s (Prometheus' default interval).
Metrics are counted in both arms (they cannot be turned off: a counter increment costs
microseconds); their per-step cost is reported by a separate micro-measurement. Medians of the
rounds; nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
from temporalio.client import Client

from bench.harness import Stack, embedded_stack, free_port, sequential_overheads, throughput
from crewline.metrics import Metrics, MetricsServer
from crewline.telemetry import Tracing, setup_tracing
from workers.main import build_worker, worker_interceptors
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

# Prometheus' default scrape interval (and the compose file's).
SCRAPE_EVERY_S = 15.0


class Arm:
    def __init__(self, stack: Stack, tracing: Tracing) -> None:
        self.stack, self.tracing = stack, tracing
        config = stack.client.config()
        config["interceptors"] = worker_interceptors(tracing)
        self.client = Client(**config)
        self.metrics = Metrics()

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        settings = self.stack.settings.model_copy(update={"scripted_delay_s": 0.0})
        endpoint = MetricsServer(self.metrics, "127.0.0.1", 0, None).start()
        scraping = asyncio.create_task(self._scrape(endpoint.port))
        try:
            async with build_worker(
                self.client, settings, engine=self.stack.engine, search_backend=None,
                metrics=self.metrics, tracing=self.tracing,
            ):  # fmt: skip
                yield
        finally:
            scraping.cancel()
            endpoint.stop()

    def flush(self) -> None:
        if self.tracing.provider is not None:
            self.tracing.provider.force_flush()

    async def _scrape(self, port: int) -> None:
        if not self.tracing.enabled:
            return
        async with httpx.AsyncClient() as http:
            while True:
                await http.get(f"http://127.0.0.1:{port}/metrics")
                await asyncio.sleep(SCRAPE_EVERY_S)

    async def run_once(self) -> None:
        run_id = f"bench-{uuid.uuid4().hex[:12]}"
        await self.client.execute_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=run_id, query="Build a snake game"),
            id=run_id,
            task_queue=self.stack.settings.task_queue,
        )


def metric_ops_per_step_us(samples: int = 20_000) -> float:
    """What one step's metric updates cost (the calls an agent step makes), in µs."""
    metrics = Metrics()
    start = time.perf_counter()
    for _ in range(samples):
        metrics.step_queue_seconds.labels("planner").observe(0.001)
        metrics.llm_seconds.labels("groq", "m").observe(0.5)
        metrics.llm_calls.labels("groq", "m", "ok").inc()
        metrics.charged(
            agent="planner", model="m", version="v", shadow=False,
            input_tokens=100, output_tokens=50, cost_usd=Decimal("0.0001"),
        )  # fmt: skip
        metrics.breaker_failures.labels("groq", "m").set(0)
        metrics.step_seconds.labels("planner", "ok").observe(0.5)
    return (time.perf_counter() - start) / samples * 1e6


async def main(rounds: int, runs: int, in_flight: int, total: int) -> None:
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(sink_port)])
    results: dict[str, dict[str, list[float]]] = {
        arm: {"p50": [], "throughput": [], "cpu": []} for arm in ("off", "on")
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with embedded_stack(Path(tmp)) as stack:
                traced = stack.settings.model_copy(
                    update={"otel_endpoint": f"http://127.0.0.1:{sink_port}"}
                )
                arms = {
                    "off": Arm(stack, setup_tracing(stack.settings, "bench")),
                    "on": Arm(stack, setup_tracing(traced, "bench")),
                }
                assert arms["on"].tracing.enabled and not arms["off"].tracing.enabled
                for round_no in range(rounds):
                    order = ("off", "on") if round_no % 2 == 0 else ("on", "off")
                    for name in order:
                        arm = arms[name]
                        async with arm.worker():
                            await arm.run_once()  # warm-up
                            # Spans still queued from the last phase are exported now, not
                            # during the sequential runs measured next.
                            await asyncio.to_thread(arm.flush)
                            cpu = time.process_time()  # this process: worker, client, exporter
                            overheads = await sequential_overheads(arm.run_once, runs, 0.0)
                            cpu = (time.process_time() - cpu) / runs * 1000
                            rate = await throughput(arm.run_once, in_flight, total)
                        results[name]["p50"].append(statistics.median(overheads))
                        results[name]["throughput"].append(rate)
                        results[name]["cpu"].append(cpu)
                        p50 = results[name]["p50"][-1]
                        print(f"round {round_no + 1} {name:>3}: per-step p50 {p50:.2f} ms, "
                              f"{rate:.1f} runs/s", flush=True)  # fmt: skip
                arms["on"].tracing.shutdown()
    finally:
        sink.terminate()
    off, on = (statistics.median(results[a]["p50"]) for a in ("off", "on"))
    off_tp, on_tp = (statistics.median(results[a]["throughput"]) for a in ("off", "on"))
    print(f"\nper-step overhead p50 (d=0), median of {rounds} rounds x {runs} runs:")
    print(f"  tracing off {off:.2f} ms   tracing on {on:.2f} ms   difference {on - off:+.2f} ms")
    off_cpu, on_cpu = (statistics.median(results[a]["cpu"]) for a in ("off", "on"))
    print(f"worker-process CPU per run: off {off_cpu:.1f} ms  on {on_cpu:.1f} ms  "
          f"({(on_cpu - off_cpu) / 5:+.2f} ms a step)")  # fmt: skip
    print(f"pipelines/s at {in_flight} in flight: off {off_tp:.1f}  on {on_tp:.1f} "
          f"({on_tp / off_tp:.2f}x)")  # fmt: skip
    print(f"metric updates per step (always on): {metric_ops_per_step_us():.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--total", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.runs, args.in_flight, args.total))
    sys.stdout.flush()
    os._exit(0)  # temporalio/sdk-python#300: no native-core abort after a finished run
