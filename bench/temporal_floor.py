"""Temporal's own floor: no-op activities in a workflow (five, or as many as the workload has
durable steps), on the same embedded server.

Same server (shipped tuning), same client and data converter, same worker defaults as crewline
(sandboxed workflow, eager activities) — but no crewline code: no database writes, no prompts, no
ledger. crewline's figure divided by this one is what crewline itself adds on top of Temporal.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

STEPS = 5


@activity.defn(name="bench_fake_llm")
async def fake_llm(delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    return "ok"


@workflow.defn(name="BenchNoopPipeline")
class NoopPipeline:
    @workflow.run
    async def run(self, delay_s: float, steps: int = STEPS) -> int:
        for _ in range(steps):
            await workflow.execute_activity(
                fake_llm, delay_s, start_to_close_timeout=timedelta(minutes=1)
            )
        return steps


@asynccontextmanager
async def noop_worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    async with Worker(
        client, task_queue=task_queue, workflows=[NoopPipeline], activities=[fake_llm]
    ):
        yield


async def run_noop(client: Client, task_queue: str, delay_s: float) -> None:
    await client.execute_workflow(
        NoopPipeline.run, delay_s, id=f"floor-{uuid.uuid4().hex[:12]}", task_queue=task_queue
    )
