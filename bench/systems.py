"""`python -m bench.systems` (`make bench`): crewline side by side with Temporal's own floor and
the other agent frameworks on Temporal, on one embedded server, in one invocation.

Systems: `floor` (five no-op activities), `openai-agents` (the OpenAI Agents SDK with Temporal's
plugin), `pydantic-ai` (Pydantic AI's durable execution), `crewline` (the production worker:
ledger, step rows, budgets, breaker, heartbeats; the scripted provider as an instant model).
Each system's worker runs in its own process, so CPU per run is read per process from /proc;
the driver (this process) starts the runs with the system's own client. Rounds are interleaved,
each starting with a different system, so drift and noise hit all alike; medians are reported.
Per round and system: per-step overhead (sequential runs at d=0: end-to-end / 5), pipelines/s
at 20 in flight, worker and server CPU per run during that phase, history bytes and events per
run. Then crewline with 1 and 2 worker processes (`--scaling`), and optionally 1,000 runs in
flight at d=1 s for crewline and the floor (`--burst 1000`). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench import peers
from bench.harness import free_port, throughput
from bench.temporal_floor import STEPS, NoopPipeline, fake_llm
from crewline.process import stop_processes
from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, DevServer

SYSTEMS = ("floor", "openai-agents", "pydantic-ai", "crewline")
QUERY = "Build a snake game"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# ---- a worker process per system -----------------------------------------------------------------
def crewline_settings(address: str, queue: str, data: Path, delay_s: float) -> Settings:
    return Settings(
        LLM_PROVIDER="scripted", SCRIPTED_DELAY_S=delay_s, CREWLINE_DATA_DIR=data,
        TEMPORAL_ADDRESS=address, CREWLINE_TASK_QUEUE=queue, SEARCH_BACKEND="none",
        RESEARCH_MODE="never", LOG_LEVEL="WARNING", WORKER_METRICS_PORT=0,
        CREWLINE_ADMIN_KEY=SecretStr("bench-admin-key-0123456789"),
        _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip


async def serve(
    system: str, address: str, queue: str, data: Path, delay_s: float, tools: int
) -> None:
    """Run one system's worker until SIGTERM; print `ready` once it polls."""
    from temporalio.worker import Worker

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if system == "crewline":
        from crewline.temporal import connect
        from workers.main import build_worker

        settings = crewline_settings(address, queue, data, delay_s)
        client = await connect(settings, worker=True)
        if tools:
            from bench.tool_agents import InstantSearch, ToolScript

            worker = build_worker(
                client, settings, llm=ToolScript(settings, tools), search_backend=InstantSearch()
            )
        else:
            worker = build_worker(client, settings, search_backend=None)
    elif system == "floor":
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        worker = Worker(client, task_queue=queue, workflows=[NoopPipeline], activities=[fake_llm])
    else:
        peer = peers.load(system)
        client = await Client.connect(address, plugins=[peer.plugin()])
        worker = Worker(
            client, task_queue=queue, workflows=[peer.Pipeline],
            activities=getattr(peer, "ACTIVITIES", []),
        )  # fmt: skip
    async with worker:
        print("ready", flush=True)
        await stop.wait()


@dataclass
class WorkerProcesses:
    system: str
    address: str
    queue: str
    data: Path
    count: int = 1
    delay_s: float = 0.0
    tools: int = 0
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> WorkerProcesses:
        for _ in range(self.count):
            command = [
                sys.executable, "-m", "bench.systems", "--serve", self.system, "--address",
                self.address, "--queue", self.queue, "--data", str(self.data),
                "--delay", str(self.delay_s), "--tools", str(self.tools),
            ]  # fmt: skip
            # Python as installed: bytecode caches on (this machine's environment turns them
            # off, which makes every sandboxed workflow run compile its module from source).
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                raise RuntimeError(f"{self.system} worker did not start: {line!r}")
            self.procs.append(proc)
        return self

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def __exit__(self, *exc: object) -> None:
        stop_processes(self.procs, timeout_s=40)


# ---- the driver ----------------------------------------------------------------------------------
async def starter(
    system: str, address: str, queue: str, delay_s: float = 0.0, tools: int = 0
) -> Callable[[], Awaitable[str]]:
    """A function that runs one pipeline to completion with the system's own client. With
    `tools`, the floor runs as many no-op activities as the others take durable steps (5 agents,
    the first with `tools` calls: 5 + 2 * tools)."""
    steps = STEPS + 2 * tools
    if system in ("floor", "crewline"):
        converter = DATA_CONVERTER if system == "crewline" else pydantic_data_converter
        client = await Client.connect(address, data_converter=converter)
    else:
        client = await Client.connect(address, plugins=[peers.load(system).plugin()])

    async def run_once() -> str:
        run_id = f"bench-{system}-{uuid.uuid4().hex[:12]}"
        if system == "floor":
            await client.execute_workflow(
                NoopPipeline.run, args=[delay_s, steps], id=run_id, task_queue=queue
            )
        elif system == "crewline":
            from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

            await client.execute_workflow(
                AgentPipelineWorkflow.run, PipelineInput(run_id=run_id, query=QUERY),
                id=run_id, task_queue=queue,
            )  # fmt: skip
        else:
            flow = peers.load(system).Pipeline
            args = [QUERY, tools] if tools else [QUERY]
            await client.execute_workflow(flow.run, args=args, id=run_id, task_queue=queue)
        return run_id

    run_once.client = client  # type: ignore[attr-defined]
    return run_once


async def history_size(client: Client, run_id: str) -> tuple[int, int, int, int]:
    """(protobuf bytes, JSON bytes as `temporal workflow show --output json` prints, events,
    durable steps: the activities the run scheduled)."""
    history = await client.get_workflow_handle(run_id).fetch_history()
    steps = sum(e.HasField("activity_task_scheduled_event_attributes") for e in history.events)
    return (
        sum(e.ByteSize() for e in history.events), len(history.to_json()), len(history.events),
        steps,
    )  # fmt: skip


async def measure(
    system: str,
    server: DevServer,
    data: Path,
    sequential: int,
    total: int,
    in_flight: int,
    tools: int = 0,
) -> dict[str, float]:
    """Per-step overhead is a sequential run's wall time over its durable steps (the activities
    its history scheduled: model turns, tool calls and whatever else the system records)."""
    queue = f"bench-{system}-{uuid.uuid4().hex[:6]}"
    assert server.process is not None
    with WorkerProcesses(system, server.address, queue, data, tools=tools) as workers:
        run_once = await starter(system, server.address, queue, tools=tools)
        for _ in range(3):
            await run_once()  # warm-up (imports, caches, sandbox)
        latencies = []
        for _ in range(sequential):
            started = time.perf_counter()
            await run_once()
            latencies.append((time.perf_counter() - started) * 1000)
        cpu_worker, cpu_server = workers.cpu(), cpu_seconds(server.process.pid)
        rate = await throughput(run_once, in_flight, total)
        cpu_worker = (workers.cpu() - cpu_worker) / total * 1000
        cpu_server = (cpu_seconds(server.process.pid) - cpu_server) / total * 1000
        client = run_once.client  # type: ignore[attr-defined]
        size, json_size, events, steps = await history_size(client, await run_once())
    return {
        "steps": steps,
        "run_ms_p50": statistics.median(latencies),
        "step_ms_p50": statistics.median(latencies) / steps,
        "runs_per_s": rate,
        "worker_cpu_ms_per_run": cpu_worker,
        "server_cpu_ms_per_run": cpu_server,
        "history_bytes": size,
        "history_json_bytes": json_size,
        "history_events": events,
    }


async def scaling(server: DevServer, data: Path, total: int, in_flight: int) -> dict[int, float]:
    """crewline's pipelines/s with 1 and 2 worker processes."""
    out = {}
    for count in (1, 2):
        queue = f"bench-scale-{count}-{uuid.uuid4().hex[:6]}"
        with WorkerProcesses("crewline", server.address, queue, data, count=count):
            run_once = await starter("crewline", server.address, queue)
            await run_once()
            out[count] = await throughput(run_once, in_flight, total)
    return out


async def burst(server: DevServer, data: Path, system: str, count: int) -> float:
    """Wall time of `count` runs started at once with a 1 s model on every step."""
    queue = f"bench-burst-{system}-{uuid.uuid4().hex[:6]}"
    with WorkerProcesses(system, server.address, queue, data, delay_s=1.0):
        run_once = await starter(system, server.address, queue, delay_s=1.0)
        started = time.perf_counter()
        await asyncio.gather(*(run_once() for _ in range(count)))
        return time.perf_counter() - started


def report(rounds: list[dict[str, dict[str, float]]], systems: list[str]) -> str:
    def med(system: str, key: str) -> float:
        return statistics.median(r[system][key] for r in rounds if system in r)

    header = (
        f"{'':<16}{'steps':>6}{'per-step p50':>14}{'runs/s @20':>12}{'worker CPU/run':>16}"
        f"{'server CPU/run':>16}{'history':>10}{'(JSON)':>9}{'events':>8}"
    )
    lines = [header]
    for system in systems:
        lines.append(
            f"{system:<16}{med(system, 'steps'):>6.0f}{med(system, 'step_ms_p50'):>11.1f} ms"
            f"{med(system, 'runs_per_s'):>12.1f}"
            f"{med(system, 'worker_cpu_ms_per_run'):>13.1f} ms"
            f"{med(system, 'server_cpu_ms_per_run'):>13.1f} ms"
            f"{med(system, 'history_bytes') / 1000:>8.1f}kB"
            f"{med(system, 'history_json_bytes') / 1000:>7.1f}kB"
            f"{med(system, 'history_events'):>8.0f}"
        )
    if "floor" in systems:
        keys = (
            "step_ms_p50", "runs_per_s", "worker_cpu_ms_per_run", "history_bytes",
            "history_json_bytes",
        )  # fmt: skip
        lines.append(
            "ratios to the floor (per-step, runs/s, worker CPU, history, JSON; then per-step "
            "paired within each round, median and range):"
        )
        for system in systems:
            if system != "floor":
                ratios = "".join(f"{med(system, k) / med('floor', k):8.2f}x" for k in keys)
                # Rounds drift (the server's store grows): a round's systems share its drift.
                paired = sorted(
                    r[system]["step_ms_p50"] / r["floor"]["step_ms_p50"]
                    for r in rounds if system in r and "floor" in r
                )  # fmt: skip
                ratios += (
                    f"   paired {statistics.median(paired):.2f}x ({paired[0]:.2f}-{paired[-1]:.2f})"
                )
                lines.append(f"  {system:<14}{ratios}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    systems = [s for s in SYSTEMS if s in args.systems]
    for system in list(systems):
        if system in peers.PEERS:
            try:
                peers.load(system)
            except ImportError as exc:
                print(f"left out: {exc}", flush=True)
                systems.remove(system)
    if args.tools and "pydantic-ai" in systems:
        print("left out: pydantic-ai (the --tools workload is not modelled for it)", flush=True)
        systems.remove("pydantic-ai")
    results: dict[str, Any] = {
        "systems": systems,
        "tools": args.tools,
        "rounds": [],
        "started": time.time(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = DevServer(workdir / "temporal.db", port=free_port(), ui_port=free_port())
        await server.start()
        try:
            for round_no in range(args.rounds):
                order = systems[round_no % len(systems) :] + systems[: round_no % len(systems)]
                measured = {}
                for system in order:
                    measured[system] = await measure(
                        system,
                        server,
                        workdir / "data",
                        args.sequential,
                        args.total,
                        args.in_flight,
                        args.tools,
                    )
                    m = measured[system]
                    print(
                        f"round {round_no + 1} {system:<14} {m['steps']:3.0f} steps "
                        f"{m['step_ms_p50']:6.1f} ms/step "
                        f"{m['runs_per_s']:6.1f} runs/s  CPU/run worker "
                        f"{m['worker_cpu_ms_per_run']:5.1f} server "
                        f"{m['server_cpu_ms_per_run']:5.1f} ms", flush=True,
                    )  # fmt: skip
                results["rounds"].append(measured)
            if args.scaling and "crewline" in systems:
                results["scaling"] = await scaling(
                    server, workdir / "data", args.total * 2, args.in_flight * 2
                )
            if args.burst:
                results["burst"] = {
                    system: await burst(server, workdir / "data", system, args.burst)
                    for system in ("floor", "crewline")
                }
        finally:
            server.stop()
    print("\n" + report(results["rounds"], systems))
    if "scaling" in results:
        one, two = results["scaling"][1], results["scaling"][2]
        print(f"crewline pipelines/s at {args.in_flight * 2} in flight: 1 worker process "
              f"{one:.1f}, 2 processes {two:.1f} ({two / one:.2f}x)")  # fmt: skip
    if "burst" in results:
        b = results["burst"]
        print(f"{args.burst} runs in flight at d=1 s: floor {b['floor']:.1f} s, crewline "
              f"{b['crewline']:.1f} s ({b['crewline'] / b['floor']:.2f}x)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tools", type=int, default=0,
        help="the first agent makes this many tool calls, one per turn (0: five plain steps)",
    )  # fmt: skip
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--total", type=int, default=100, help="runs in the throughput phase")
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--scaling", action="store_true", help="crewline with 1 and 2 workers")
    parser.add_argument("--burst", type=int, default=0, help="runs at once at d=1 s (e.g. 1000)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/systems.json"))
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.address, args.queue, args.data, args.delay, args.tools))
    else:
        asyncio.run(main(args))
    sys.stdout.flush()
    os._exit(0)  # temporalio/sdk-python#300: no native-core abort after a finished run
