"""The Temporal side of versions: the Worker Deployment whose build ids are snapshot ids.

Temporal is the authority on routing: the deployment's *current* version is where new pipeline
runs start, and a run stays pinned to the version that started it. This module reads that state,
changes it with the deployment's conflict token (so two concurrent changes cannot both win), asks
Temporal which versions have a live worker (worker heartbeats), and moves pinned runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.deployment.v1 import WorkerDeploymentVersion as ProtoVersion
from temporalio.api.enums.v1 import WorkerStatus
from temporalio.api.workflow.v1 import VersioningOverride, WorkflowExecutionOptions
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    ListWorkersRequest,
    SetWorkerDeploymentCurrentVersionRequest,
    UpdateWorkflowExecutionOptionsRequest,
)
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode

from crewline.settings import Settings

T = TypeVar("T")

# A worker counts as live while its last heartbeat is younger than this many of its own
# heartbeat intervals (and at least LIVE_FLOOR): one lost heartbeat is not a dead worker.
LIVE_INTERVALS = 3
LIVE_FLOOR = timedelta(seconds=10)
# How long a deployment call answered "busy" is retried (`_busy_retry`).
BUSY_RETRY_FOR_S = 20.0
BUSY_FIRST_DELAY_S = 0.2


class DeploymentConflictError(Exception):
    """The deployment changed since it was read (Temporal's conflict token did not match)."""


@dataclass(frozen=True)
class DeploymentState:
    current: str | None  # build id (= snapshot id) of the current version
    ramping: str | None
    conflict_token: bytes
    exists: bool


@dataclass(frozen=True)
class LiveWorker:
    version: str
    identity: str
    host: str
    last_heartbeat: datetime


def deployment_version(settings: Settings, version_id: str) -> WorkerDeploymentVersion:
    return WorkerDeploymentVersion(settings.deployment_name, version_id)


def visibility_name(settings: Settings, version_id: str) -> str:
    """How the version is spelled in Temporal's visibility (`TemporalWorkerDeploymentVersion`)."""
    return f"{settings.deployment_name}:{version_id}"


async def describe(client: Client, settings: Settings) -> DeploymentState:
    request = DescribeWorkerDeploymentRequest(
        namespace=settings.temporal_namespace, deployment_name=settings.deployment_name
    )
    try:
        resp = await _busy_retry(
            lambda: client.workflow_service.describe_worker_deployment(request)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # no versioned worker ever polled
            return DeploymentState(current=None, ramping=None, conflict_token=b"", exists=False)
        raise
    routing = resp.worker_deployment_info.routing_config
    return DeploymentState(
        current=routing.current_deployment_version.build_id or None,
        ramping=routing.ramping_deployment_version.build_id or None,
        conflict_token=resp.conflict_token,
        exists=True,
    )


async def live_workers(client: Client, settings: Settings) -> dict[str, list[LiveWorker]]:
    """Versioned workers of this deployment and task queue that are running now, by version."""
    found: dict[str, list[LiveWorker]] = {}
    now = datetime.now(UTC)
    token = b""
    while True:
        resp = await client.workflow_service.list_workers(
            ListWorkersRequest(
                namespace=settings.temporal_namespace, page_size=1000, next_page_token=token
            )
        )
        for info in resp.workers_info:
            beat = info.worker_heartbeat
            version = beat.deployment_version
            if (
                version.deployment_name != settings.deployment_name
                or beat.task_queue != settings.task_queue
                or beat.status != WorkerStatus.WORKER_STATUS_RUNNING
            ):
                continue
            last = beat.heartbeat_time.ToDatetime(tzinfo=UTC)
            window = max(
                LIVE_INTERVALS * beat.elapsed_since_last_heartbeat.ToTimedelta(), LIVE_FLOOR
            )
            if now - last <= window:
                found.setdefault(version.build_id, []).append(
                    LiveWorker(
                        version.build_id, beat.worker_identity, beat.host_info.host_name, last
                    )
                )
        token = resp.next_page_token
        if not token:
            return found


async def _busy_retry(call: Callable[[], Awaitable[T]]) -> T:
    """Temporal answers "too many requests issued to Worker Deployment" for a moment after a
    version's first poll (its deployment entity is busy registering it): that means try again
    later, which we do, for a bounded time."""
    delay = BUSY_FIRST_DELAY_S
    deadline = asyncio.get_running_loop().time() + BUSY_RETRY_FOR_S
    while True:
        try:
            return await call()
        except RPCError as exc:
            busy = exc.status == RPCStatusCode.RESOURCE_EXHAUSTED
            if not busy or asyncio.get_running_loop().time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def set_current(
    client: Client, settings: Settings, version_id: str, conflict_token: bytes, identity: str
) -> None:
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=settings.temporal_namespace,
        deployment_name=settings.deployment_name,
        build_id=version_id,
        conflict_token=conflict_token,
        identity=identity[:200],
    )
    try:
        await _busy_retry(
            lambda: client.workflow_service.set_worker_deployment_current_version(request)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.FAILED_PRECONDITION and "conflict" in exc.message.lower():
            raise DeploymentConflictError(exc.message) from None
        raise


async def open_runs_on(client: Client, settings: Settings, version_id: str) -> list[str]:
    """Workflow ids of the open pipeline runs pinned to this version (Temporal's visibility)."""
    query = (
        f"TemporalWorkerDeploymentVersion = '{visibility_name(settings, version_id)}' "
        f"AND TaskQueue = '{settings.task_queue}' AND ExecutionStatus = 'Running'"
    )
    return [wf.id async for wf in client.list_workflows(query)]


async def pin_runs(
    client: Client, settings: Settings, workflow_ids: list[str], version_id: str
) -> int:
    """Pin these runs to another version (Temporal's workflow options update); how many moved."""
    override = VersioningOverride(
        pinned=VersioningOverride.PinnedOverride(
            version=ProtoVersion(deployment_name=settings.deployment_name, build_id=version_id),
            behavior=VersioningOverride.PINNED_OVERRIDE_BEHAVIOR_PINNED,
        )
    )
    moved = 0
    for workflow_id in workflow_ids:
        try:
            await client.workflow_service.update_workflow_execution_options(
                UpdateWorkflowExecutionOptionsRequest(
                    namespace=settings.temporal_namespace,
                    workflow_execution=WorkflowExecution(workflow_id=workflow_id),
                    workflow_execution_options=WorkflowExecutionOptions(
                        versioning_override=override
                    ),
                    update_mask=FieldMask(paths=["versioning_override"]),
                )
            )
            moved += 1
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # ended meanwhile: nothing to move
                raise
    return moved
