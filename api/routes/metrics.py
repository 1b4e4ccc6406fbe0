"""`/metrics`: the API process's Prometheus metrics, and the request counter that feeds them.

Open like `/health` (Prometheus scrapes without a key): it holds counts with bounded labels —
never a run id, a query or a key. Besides the API's own request counters it reports the runs
table as it is now (`crewline_runs{status}`), read at scrape time, so "what is failing right
now" has an answer even with no worker up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crewline.metrics import Metrics
from records.statuses import Approval
from records.tables import Run, ToolCall

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    body = await run_in_threadpool(registry.exposition)  # the runs collector reads the DB
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RunsByStatus(Collector):
    """`crewline_runs{status}`: runs in the app database by status, at scrape time (shadow runs
    apart, `shadow="true"`); `crewline_approvals_waiting{tool}` and
    `crewline_approval_oldest_wait_seconds`: tool calls waiting for a person now, and how long
    the oldest has waited (alert on it: a forgotten approval holds its run)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "crewline_runs", "Runs in the database by status", labels=["status", "shadow"]
        )
        shadow = col(Run.shadow_of).is_not(None)
        with Session(self._engine) as session:
            rows = session.exec(
                select(Run.status, shadow, func.count()).group_by(Run.status, shadow)  # type: ignore[call-overload]
            ).all()
            waiting = session.exec(
                select(ToolCall.name, func.count(), func.min(ToolCall.approval_asked_at))  # type: ignore[call-overload]
                .where(col(ToolCall.approval) == Approval.PENDING.value)
                .group_by(ToolCall.name)
            ).all()
        for status, is_shadow, count in rows:
            family.add_metric([status, "true" if is_shadow else "false"], float(count))
        yield family
        calls = GaugeMetricFamily(
            "crewline_approvals_waiting", "Tool calls waiting for a person's decision now",
            labels=["tool"],
        )  # fmt: skip
        oldest: datetime | None = None
        for tool, count, asked in waiting:
            calls.add_metric([tool], float(count))
            asked = asked.replace(tzinfo=UTC) if asked and asked.tzinfo is None else asked
            oldest = asked if oldest is None or (asked and asked < oldest) else oldest
        yield calls
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "crewline_approval_oldest_wait_seconds",
            "How long the oldest waiting tool call has waited (0: none waits)", value=age,
        )  # fmt: skip


# A label value per method HTTP defines; anything else a client sends is counted as "other" (a
# raw method as a label let random methods grow /metrics without bound).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class RequestMetrics:
    """ASGI middleware: each request counted by method, route template (`/runs/{run_id}`, never
    the id) and status, and timed."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_seconds.labels(method, route).observe(time.perf_counter() - started)


def install(app: FastAPI, metrics: Metrics) -> None:
    """The `/metrics` route and the request counter (the runs collector joins in the lifespan,
    once the engine exists: `watch_runs`)."""
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.include_router(router)


def watch_runs(metrics: Metrics, engine: Engine) -> Collector:
    collector = RunsByStatus(engine)
    metrics.registry.register(collector)
    return collector
