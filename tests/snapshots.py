"""Test helpers for versions: copies of the agent code with a changed finalizer prompt, their
snapshots, and waiting for a version's worker to be live in Temporal."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

from temporalio.client import Client

from crewline.settings import Settings
from tests.conftest import REPO, assert_eventually
from versioning import bundle, deployment, registry


def checkout(root: Path, finalizer_line: str) -> Path:
    """A copy of the agent code whose finalizer system prompt ends with `finalizer_line`."""
    for package in bundle.BUNDLE_PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    set_finalizer(root, finalizer_line)
    return root


def set_finalizer(root: Path, line: str) -> None:
    path = root / "activities/prompts/finalizer.md"
    system, sep, user = path.read_text().partition("---user---")
    path.write_text(f"{system.rstrip()}\n{line}\n{sep}{user}")


def fingerprint(root: Path) -> str:
    """What the scripted provider prints for the finalizer prompt of this checkout."""
    system = (root / "activities/prompts/finalizer.md").read_text().partition("---user---")[0]
    return "prompt " + hashlib.sha256(system.strip().encode()).hexdigest()[:6]


def snapshot(settings: Settings, engine: Any, root: Path) -> str:
    made = bundle.collect(root, settings)
    bundle.write(made, settings.snapshots_dir)
    registry.register(engine, made, source=str(root))
    return made.id


async def wait_live(client: Client, settings: Settings, *versions: str) -> None:
    async def live() -> bool:
        found = await deployment.live_workers(client, settings)
        return all(found.get(v) for v in versions)

    await assert_eventually(live, timeout=60, interval=0.2)


async def start_pinned(
    client: Client, settings: Settings, version: str, run_id: str, **fields: Any
) -> Any:
    """Start a run pinned to `version`. Right after its worker shows up live, Temporal may not
    yet know the version on the task queue ("Pinned version … is not present"): try again."""
    from temporalio.common import PinnedVersioningOverride
    from temporalio.service import RPCError

    from workflows.pipeline import AgentPipelineWorkflow, PipelineInput

    for _ in range(50):
        try:
            return await client.start_workflow(
                AgentPipelineWorkflow.run,
                PipelineInput(run_id=run_id, query="Build a snake game", **fields),
                id=run_id, task_queue=settings.task_queue,
                versioning_override=PinnedVersioningOverride(
                    deployment.deployment_version(settings, version)
                ),
            )  # fmt: skip
        except RPCError as exc:
            if "is not present in task queue" not in str(exc):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"{version} never became present on {settings.task_queue}")
