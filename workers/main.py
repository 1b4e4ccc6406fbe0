"""The worker entry point: builds the Worker that runs the pipeline workflow and agent activities.

`build_worker` is the single place that decides what a worker registers; tests use it too, so
they exercise exactly what production runs. With a `version` (a snapshot id) the worker registers
as that Worker Deployment Version and the pipeline is pinned to it; the agent code must then have
been imported from the snapshot (`workers/serve.py` does that before importing this module).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import structlog
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.agents import AgentActivities
from activities.breaker import BreakerRegistry
from activities.llm import LLMProvider, build_provider
from activities.models import check_agent_models, model_for, rate_limits
from activities.ratelimit import RateLimiter
from activities.tools.builtin import build_tools, default_search_backend
from activities.tools.search import SearchBackend
from costs.pricing import Priced, Pricer
from crewline.db import DbRunner, make_engine
from crewline.metrics import Metrics, free_loopback_port, start_worker_metrics
from crewline.sandbox import Sandbox
from crewline.settings import Settings
from crewline.telemetry import Tracing, setup_tracing
from records.statuses import AGENTS
from workflows.pipeline import AgentPipelineWorkflow
from workflows.tracing import TraceRelay

log = structlog.get_logger("crewline.worker")

# A killed worker's sticky workflow task moves to the shared queue after this long (default 10 s).
STICKY_SCHEDULE_TO_START = timedelta(seconds=3)
# On SIGTERM, in-flight LLM calls get this long to finish before they are cancelled.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)
# Send heartbeats at most this far apart (the SDK's default is 80% of the 10 s heartbeat
# timeout, which leaves 2 s of slack: at 1,000 runs in flight on 2 cores, live activities
# missed it and were run twice). 3 s leaves 7 s of slack for an overloaded worker or server.
HEARTBEAT_THROTTLE = timedelta(seconds=3)

_UNSET = object()


class _RunTracing(TracingInterceptor):
    """Temporal's TracingInterceptor for the client (StartWorkflow…) and activities
    (RunActivity…), with a relay for its workflow half (`workflows/tracing.py`): the steps'
    spans hang off the request's, without a span per workflow task."""

    def workflow_interceptor_class(self, input: Any) -> type[Any]:
        return TraceRelay


def worker_interceptors(tracing: Tracing) -> list[Any]:
    """A worker client's interceptors: tracing's, with the workflow relay (none when off)."""
    return [_RunTracing(tracing.tracer)] if tracing.enabled else []


class _Unpriced:
    """COST_TRACKING_ENABLED=false: every call priced $0, saying so (the Pricer's interface; not
    in costs/, so snapshots made before the flag keep loading)."""

    def check(self, model: str) -> None:
        return None

    def price(self, model: str, prompt_tokens: int, completion_tokens: int, **_: Any) -> Priced:
        return Priced(Decimal(0), None, None, "not priced: COST_TRACKING_ENABLED=false")


def build_worker(
    client: Client,
    settings: Settings,
    *,
    engine: Engine | None = None,
    llm: LLMProvider | None = None,
    search_backend: SearchBackend | object | None = _UNSET,
    task_queue: str | None = None,
    breakers: BreakerRegistry | None = None,
    version: str | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    **worker_options: Any,
) -> Worker:
    """The worker. Its spans go through `tracing` (the client's interceptors carry the context:
    build the client with `tracing.interceptors()`), its counts into `metrics`."""
    engine = engine or make_engine(settings.resolved_database_url)
    metrics = metrics or Metrics()
    llm = llm or build_provider(settings)  # raises ConfigurationError saying what to set
    backend = default_search_backend(settings) if search_backend is _UNSET else search_backend
    check_agent_models(settings)
    pricer = Pricer(llm.name, settings.model_prices)
    if not settings.cost_tracking_enabled:
        pricer = cast(Pricer, _Unpriced())  # tokens still counted; every row says why it is $0
    for agent in AGENTS:  # an unknown price is a start-up error, never a silent $0
        pricer.check(model_for(settings, agent))
    limits = rate_limits(settings)
    limiter = RateLimiter(engine, limits, settings.rate_limit_window_s) if limits else None
    db = DbRunner(engine)  # this worker's database threads (one writer on SQLite)
    sandbox = Sandbox(settings.sandbox_limits())
    available = sandbox.check()
    if not available.ok:
        log.warning("sandbox.unavailable", reason=available.reason)
    activities = AgentActivities(
        settings=settings,
        llm=llm,
        engine=engine,
        tools=build_tools(settings, engine, backend, tracing, db, sandbox),  # type: ignore[arg-type]
        pricer=pricer,
        breakers=breakers,
        version=version,
        metrics=metrics,
        tracing=tracing,
        limiter=limiter,
        db=db,
        sandbox=sandbox,
    )
    if version is not None:
        worker_options["deployment_config"] = WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(settings.deployment_name, version),
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        )
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[AgentPipelineWorkflow],
        activities=activities.all(),  # type: ignore[arg-type]
        sticky_queue_schedule_to_start_timeout=STICKY_SCHEDULE_TO_START,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        **worker_options,
    )


async def run_worker(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    version: str | None = None,
    on_started: Callable[[Client, Engine], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when run standalone), then shut down cleanly.
    `on_started` runs once the worker polls (e.g. make its version current on a fresh start)."""
    from crewline.temporal import connect

    metrics = Metrics()
    tracing = setup_tracing(settings, "crewline-worker")
    # The Temporal SDK's own metrics: its core serves them on loopback, our endpoint merges them.
    core = f"127.0.0.1:{free_loopback_port()}" if settings.worker_metrics_port else None
    client = await connect(
        settings, worker=True, interceptors=worker_interceptors(tracing), core_metrics=core
    )
    engine = make_engine(settings.resolved_database_url)
    worker = build_worker(
        client, settings, engine=engine, version=version, metrics=metrics, tracing=tracing
    )
    endpoint = start_worker_metrics(
        metrics,
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        f"http://{core}/metrics" if core else None,
    )
    stop = stop or _signal_event()
    log.info(
        "worker.started",
        task_queue=settings.task_queue,
        temporal=settings.temporal_address,
        provider=settings.provider(),
        version=version or "unversioned (working tree)",
        tracing="on" if tracing.enabled else "off",
    )
    try:
        async with worker:
            hook = asyncio.create_task(on_started(client, engine)) if on_started else None
            await stop.wait()
            if hook is not None:
                hook.cancel()
            log.info("worker.stopping", graceful_timeout_s=GRACEFUL_SHUTDOWN.total_seconds())
    finally:
        if endpoint is not None:
            endpoint.stop()
        tracing.shutdown()  # flushes the spans still queued
    log.info("worker.stopped")


def _signal_event() -> asyncio.Event:
    """The first SIGINT or SIGTERM: graceful stop (in-flight calls finish and are recorded). A
    second SIGINT (Ctrl-C twice): stop at once — Temporal re-runs the abandoned steps elsewhere
    after their heartbeat timeout. Further SIGTERMs change nothing: a supervisor's stop and the
    parent-death signal of `crewline up` may both arrive, and neither means "abandon the calls"
    (SIGKILL does that)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal(sig: signal.Signals) -> None:
        if not event.is_set():
            event.set()
            return
        if sig == signal.SIGINT:
            log.warning("worker.forced_exit")
            os._exit(1)
        log.info("worker.already_stopping", signal=sig.name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig)
    return event


def main() -> None:
    from crewline.logging import configure_logging
    from crewline.process import exit_hard

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json, redact=settings.secrets())
    asyncio.run(run_worker(settings))
    exit_hard(0)


if __name__ == "__main__":
    main()
