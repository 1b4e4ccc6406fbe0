"""`python -m bench` (or `make bench`): crewline's orchestration cost, side by side with its floors.

Prints a table and writes JSON (bench/results/latest.json unless --out). Every crewline figure is
reported next to plain asyncio (no durability), one-SQLite-row-per-step (durability without an
orchestrator) and five no-op activities on the same Temporal server (Temporal's own floor), as
ratios. Each measurement is repeated --repeat times; medians are reported.
Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.api_load import post_latency
from bench.baselines import SqlitePipeline, plain_pipeline
from bench.harness import (
    Runner,
    burst,
    embedded_stack,
    percentiles,
    sequential_overheads,
    throughput,
)
from bench.history import breakdown
from bench.temporal_floor import noop_worker, run_noop

SIZES = {
    # name: (sequential runs at d=0, at d=0.5, {in flight: total runs}, burst size,
    #        (POST clients, requests each))
    "quick": (3, 1, {1: 3, 20: 20}, 20, (5, 2)),
    "full": (30, 6, {1: 20, 20: 200, 100: 400}, 1000, (100, 5)),
}


def med(values: list[float]) -> float:
    return statistics.median(values)


async def measure_floor(runner_for: Any, size: tuple[Any, ...]) -> dict[str, Any]:
    seq0, seq5, tp, _, _ = size
    return {
        "overhead_ms_d0": percentiles(await sequential_overheads(runner_for(0.0), seq0, 0.0)),
        "overhead_ms_d500": percentiles(await sequential_overheads(runner_for(0.5), seq5, 0.5)),
        "throughput": {c: await throughput(runner_for(0.0), c, n) for c, n in tp.items()},
    }


async def measure_temporal_floor(workdir: Path, size: tuple[Any, ...]) -> dict[str, Any]:
    async with embedded_stack(workdir) as stack:
        queue = f"{stack.settings.task_queue}-floor"
        async with noop_worker(stack.client, queue):
            await run_noop(stack.client, queue, 0.0)  # warm-up

            def runner_for(d: float) -> Runner:
                return lambda: run_noop(stack.client, queue, d)

            return await measure_floor(runner_for, size)


async def measure_crewline(workdir: Path, size: tuple[Any, ...], tuned: bool) -> dict[str, Any]:
    seq0, seq5, tp, burst_n, (clients, each) = size
    options: dict[str, Any] = {} if tuned else {"dynamic_config": {}, "sqlite_pragmas": {}}
    async with embedded_stack(workdir, **options) as stack:
        out: dict[str, Any] = {}
        async with stack.worker(0.0):
            await stack.run_once()  # warm-up
            out["overhead_ms_d0"] = percentiles(
                await sequential_overheads(stack.run_once, seq0, 0.0)
            )
            out["throughput"] = {c: await throughput(stack.run_once, c, n) for c, n in tp.items()}
            run_id = await stack.run_once()
            history = await stack.client.get_workflow_handle(run_id).fetch_history()
            out["history_breakdown"] = breakdown(history)
        async with stack.worker(0.5):
            out["overhead_ms_d500"] = percentiles(
                await sequential_overheads(stack.run_once, seq5, 0.5)
            )
        if tuned:
            assert stack.server.process is not None
            async with stack.worker(1.0):
                wall, peak = await burst(
                    stack.run_once, burst_n, [os.getpid(), stack.server.process.pid]
                )
            out["burst"] = {
                "runs": burst_n,
                "wall_s": wall,
                "ideal_s": 5.0,
                "worker_rss_mb": peak[os.getpid()],
                "server_rss_mb": peak[stack.server.process.pid],
            }
            out["post_runs_ms"] = await post_latency(stack.settings, clients, each)
        return out


def _median_of(reps: list[dict[str, Any]], *path: Any) -> float:
    values = []
    for rep in reps:
        node: Any = rep
        for key in path:
            node = node[key]
        values.append(node)
    return med(values)


def report(results: dict[str, Any]) -> str:
    rows = []
    systems = ("asyncio", "sqlite", "temporal", "crewline_untuned", "crewline")

    def line(label: str, *path: Any, fmt: str = "{:9.2f}") -> None:
        vals = {s: _median_of(results[s], *path) for s in systems if results.get(s)}
        base = vals.get("asyncio")
        cells = [fmt.format(vals[s]) if s in vals else " " * 9 for s in systems]
        ratio = ""
        if "crewline" in vals and base:
            ratio = f"  crewline/asyncio {vals['crewline'] / base:6.1f}x"
            if vals.get("sqlite"):
                ratio += f"  crewline/sqlite {vals['crewline'] / vals['sqlite']:6.1f}x"
            if vals.get("temporal"):
                ratio += f"  crewline/temporal {vals['crewline'] / vals['temporal']:5.2f}x"
        rows.append(f"{label:<34}" + " ".join(cells) + ratio)

    rows.append(f"{'':<34}" + " ".join(f"{s[:9]:>9}" for s in systems))
    for d in ("d0", "d500"):
        for p in ("p50", "p95", "p99"):
            line(f"per-step overhead ms {d} {p}", f"overhead_ms_{d}", p)
    for c in results["crewline"][0]["throughput"]:
        line(f"pipelines/s at {c} in flight", "throughput", c)
    lines = ["\n".join(rows)]
    crew = results["crewline"]
    b = crew[0]["burst"]
    lines.append(
        f"burst: {b['runs']} runs in flight, d=1s: wall "
        f"{_median_of(crew, 'burst', 'wall_s'):.1f}s vs ideal 5s "
        f"({_median_of(crew, 'burst', 'wall_s') / 5:.2f}x); peak RSS worker "
        f"{_median_of(crew, 'burst', 'worker_rss_mb'):.0f} MB, server "
        f"{_median_of(crew, 'burst', 'server_rss_mb'):.0f} MB"
    )
    lines.append(
        "POST /runs ms: p50 {:.1f}  p95 {:.1f}  p99 {:.1f}".format(
            *(_median_of(crew, "post_runs_ms", p) for p in ("p50", "p95", "p99"))
        )
    )
    lines.append("where one d=0 run's time goes (median per transition, ms):")
    for label, info in crew[0]["history_breakdown"].items():
        lines.append(f"  {label:<62} {info['median_ms']:7.1f}  (x{info['count']})")
    return "\n".join(lines)


async def main(size_name: str, repeat: int, out: Path, compare_untuned: bool) -> None:
    size = SIZES[size_name]
    results: dict[str, Any] = {"size": size_name, "repeat": repeat, "started": time.time()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sqlite = SqlitePipeline(workdir / "baseline.db")

        def plain(d: float) -> Runner:
            return lambda: plain_pipeline(d)

        def durable(d: float) -> Runner:
            return lambda: sqlite.run(d)

        results["asyncio"] = [await measure_floor(plain, size) for _ in range(repeat)]
        results["sqlite"] = [await measure_floor(durable, size) for _ in range(repeat)]
        sqlite.close()
        results["temporal"] = [
            await measure_temporal_floor(workdir / f"f{i}", size) for i in range(repeat)
        ]
        results["crewline"] = []
        results["crewline_untuned"] = []
        for i in range(repeat):
            results["crewline"].append(await measure_crewline(workdir / f"t{i}", size, True))
            if compare_untuned:
                untuned = await measure_crewline(workdir / f"u{i}", size, False)
                results["crewline_untuned"].append(untuned)
    table = report(results)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--no-untuned", action="store_true", help="skip the untuned server")
    args = parser.parse_args()
    asyncio.run(main("quick" if args.quick else "full", args.repeat, args.out, not args.no_untuned))
    sys.stdout.flush()
    os._exit(0)  # temporalio/sdk-python#300: no native-core abort after a finished run
