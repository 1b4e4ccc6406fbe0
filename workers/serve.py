"""Serve a version: a worker whose agent code comes from a snapshot zip, not the working tree.

`crewline worker --version ID` loads that snapshot; plain `crewline worker` snapshots the working
tree first and serves it the same way — so every versioned worker runs verified zip content, and
its build id says exactly what it runs. Import order is the point of this module: the snapshot is
loaded *before* `workers.main` (and with it every agent module) is imported.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import Engine
from temporalio.client import Client

from crewline.db import make_engine
from crewline.settings import Settings
from versioning import deployment, registry
from versioning.bundle import BundleError, collect, default_source, write
from versioning.loader import load_snapshot

log = structlog.get_logger("crewline.worker")

# How long a worker waits to see itself live in Temporal (then it says it is ready).
READY_WAIT_S = 60.0


def snapshot_working_tree(settings: Settings, engine: Engine) -> str:
    """Snapshot this install's agent code (idempotent: same content, same id); returns the id."""
    source = default_source()
    bundle = collect(source, settings)
    write(bundle, settings.snapshots_dir)
    registry.register(engine, bundle, source=str(source))
    return bundle.id


def load_version(settings: Settings, version_id: str) -> Settings:
    """Import the agent code from the snapshot; returns settings with its model settings."""
    path = settings.snapshots_dir / f"{version_id}.zip"
    if not path.is_file():
        raise BundleError(
            f"snapshot {version_id} is not in {settings.snapshots_dir}: take it with "
            "`crewline version snapshot`, or copy its zip there (see `crewline version list`)"
        )
    manifest = load_snapshot(path, version_id)
    return manifest.model_settings.apply(settings)


async def _when_live(settings: Settings, version_id: str, client: Client) -> None:
    """Say when Temporal lists this worker (from then on the version can be activated). Making a
    version current is the control plane's decision (`crewline up`, the API's reconciler on a
    fresh deployment, a person), never a worker's."""
    deadline = asyncio.get_running_loop().time() + READY_WAIT_S
    while not (await deployment.live_workers(client, settings)).get(version_id):
        if asyncio.get_running_loop().time() > deadline:
            log.warning("worker.not_seen_live", version=version_id, waited_s=READY_WAIT_S)
            return
        await asyncio.sleep(0.5)
    log.info("worker.ready", version=version_id, activate=f"crewline version activate {version_id}")


async def serve(settings: Settings, version_id: str | None) -> None:
    """Run a worker for `version_id`, or for a fresh snapshot of the working tree (on a fresh
    deployment the control plane then makes it current)."""
    if version_id is None:
        version_id = await asyncio.to_thread(
            snapshot_working_tree, settings, make_engine(settings.resolved_database_url)
        )
    settings = load_version(settings, version_id)
    from workers.main import run_worker  # after the snapshot: agent code comes from its zip

    async def on_started(client: Client, engine: Engine) -> None:
        try:
            await _when_live(settings, version_id, client)
        except Exception as exc:  # the worker serves on; someone can still activate it
            log.error("worker.readiness_failed", version=version_id, error=repr(exc))

    await run_worker(settings, version=version_id, on_started=on_started)
