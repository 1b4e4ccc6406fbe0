"""The services: what crewline does, written once, for every door.

The API's routes, the dashboard's pages and (through the API) the CLI call these typed services —
runs (start, cancel, raise budget, detail, list, artifacts), approvals (decide on a tool call
that waits for a person), events (a run's stream of what happens), costs, versions (snapshot,
activate, roll back, diff, history), shadow (candidate, calibrate, divergences, report), keys,
health — and none calls another's handler. Each method checks its caller's scope first
(`services.access`), raises `services.errors` for what it refuses, and keeps the database off
the event loop.

`Services` is built once per process by the composition root (`cli/server.py`) from a `Context`:
the settings, the database engine, the Temporal client, the metrics and tracing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from temporalio.client import Client

from crewline.metrics import Metrics
from crewline.settings import Settings
from crewline.telemetry import Tracing

T = TypeVar("T")


@dataclass
class Context:
    """What every service works with."""

    settings: Settings
    engine: Engine
    temporal: Client
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing = field(default_factory=lambda: Tracing(None))

    # Work a service starts and does not wait for (a shadow's start, a calibration's starts),
    # kept referenced until done; the reconciler repairs what dies with the process.
    detached: set[asyncio.Future[Any]] = field(default_factory=set)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(engine, *args, **kwargs)` in a worker thread: SQLAlchemy is synchronous."""
        return await run_in_threadpool(fn, self.engine, *args, **kwargs)

    def detach(self, work: Awaitable[Any]) -> None:
        """Run `work` after the answer, off the caller's path."""
        future = asyncio.ensure_future(work)
        self.detached.add(future)
        future.add_done_callback(self.detached.discard)


class Services:
    def __init__(self, ctx: Context) -> None:
        from services.approvals import Approvals
        from services.costs import Costs
        from services.events import Events
        from services.health import Health
        from services.keys import Keys
        from services.reconcile import Reconciler
        from services.runs import Runs
        from services.shadow import Shadow
        from services.versions import Versions

        self.ctx = ctx
        self.runs = Runs(ctx)
        self.approvals = Approvals(ctx)
        self.events = Events(ctx)
        self.costs = Costs(ctx)
        self.versions = Versions(ctx)
        self.shadow = Shadow(ctx)
        self.keys = Keys(ctx)
        self.health = Health(ctx)
        self.reconciler = Reconciler(ctx)


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(_services)]
