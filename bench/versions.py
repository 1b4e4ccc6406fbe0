"""`python -m bench.versions`: how fast a rollback takes effect, next to a start with no change.

Two snapshots (finalizer prompts differ) each served by a real `crewline worker --version`
process on the tuned embedded server. Each round: activate v2, roll back to v1, then time from
the rollback call returning until a new run's first step is running on v1 (its step row names
the version). The baseline is the same measurement with no activation change before the start.
Medians over --rounds. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.harness import Stack, embedded_stack, percentiles
from crewline.settings import Settings
from records.runs import steps_of
from versioning import activation, bundle, deployment, registry
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

REPO = Path(__file__).resolve().parent.parent


def _snapshot(settings: Settings, engine: Any, root: Path, line: str) -> str:
    for package in bundle.BUNDLE_PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    prompt = root / "activities/prompts/finalizer.md"
    prompt.write_text(prompt.read_text().replace("use Markdown.", f"use Markdown. {line}"))
    made = bundle.collect(root, settings)
    bundle.write(made, settings.snapshots_dir)
    registry.register(engine, made, source=str(root))
    return made.id


async def _first_step_on(stack: Any, version: str) -> float:
    """Seconds from now until a new run's first step row exists, checked to be on `version`."""
    start = time.perf_counter()
    run_id = f"bench-{uuid.uuid4().hex[:12]}"
    handle = await stack.client.start_workflow(
        AgentPipelineWorkflow.run,
        PipelineInput(run_id=run_id, query="Build a snake game"),
        id=run_id,
        task_queue=stack.settings.task_queue,
    )
    while not (steps := steps_of(stack.engine, run_id)):
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    if steps[0].version != version:
        raise RuntimeError(f"run {run_id} started on {steps[0].version}, not {version}")
    await handle.result()
    return elapsed


@asynccontextmanager
async def two_versions(workdir: Path, delay_s: float) -> AsyncIterator[tuple[Stack, str, str]]:
    """The embedded server, two snapshots (finalizer prompts differ) each served by a real
    `crewline worker --version` process, v1 active; (stack with d = delay_s, v1, v2)."""
    async with embedded_stack(workdir) as stack:
        settings = stack.settings.model_copy(update={"scripted_delay_s": delay_s})
        stack = dataclasses.replace(stack, settings=settings)
        v1 = _snapshot(settings, stack.engine, workdir / "v1", "Version one.")
        v2 = _snapshot(settings, stack.engine, workdir / "v2", "Version two.")
        env = {
            "LLM_PROVIDER": "scripted", "SCRIPTED_DELAY_S": str(delay_s),
            "SEARCH_BACKEND": "none", "RESEARCH_MODE": "never", "LOG_LEVEL": "WARNING",
            "PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": settings.temporal_address,
            "CREWLINE_DATA_DIR": str(settings.data_dir), "CREWLINE_TASK_QUEUE": settings.task_queue,
        }  # fmt: skip
        workers = [
            subprocess.Popen([sys.executable, "-m", "cli", "worker", "--version", v], env=env)
            for v in (v1, v2)
        ]
        try:
            while True:
                live = await deployment.live_workers(stack.client, settings)
                if live.get(v1) and live.get(v2):
                    break
                await asyncio.sleep(0.2)
            await activation.activate(stack.client, settings, stack.engine, v1)
            yield stack, v1, v2
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()


async def main(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with two_versions(Path(tmp), 0.0) as (stack, v1, v2):
            after_rollback, steady = [], []
            for _ in range(rounds):
                await activation.activate(stack.client, stack.settings, stack.engine, v2)
                await activation.rollback(stack.client, stack.settings, stack.engine)
                after_rollback.append(await _first_step_on(stack, v1))
                steady.append(await _first_step_on(stack, v1))
    after = {k: v * 1000 for k, v in percentiles(after_rollback).items()}
    steady_ms = {k: v * 1000 for k, v in percentiles(steady).items()}
    ratio = statistics.median(after_rollback) / statistics.median(steady)
    print(
        f"first step of a new run on the rolled-back-to version, {rounds} rounds:\n"
        f"  after rollback returned  p50 {after['p50']:.1f} ms  p95 {after['p95']:.1f} ms\n"
        f"  no change (baseline)     p50 {steady_ms['p50']:.1f} ms  p95 {steady_ms['p95']:.1f} ms\n"
        f"  ratio of medians {ratio:.2f}x"
    )
    return {"rounds": rounds, "after_rollback_ms": after, "no_change_ms": steady_ms}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
    import os

    sys.stdout.flush()
    os._exit(0)
