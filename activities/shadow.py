"""The end of a shadow run: wait for the primary to finish, then score the two (an activity,
because it reads the app database; it heartbeats while it waits, so a waiting comparison costs
no attempts and a dead worker's comparison moves elsewhere).
"""

from __future__ import annotations

import asyncio

import structlog
from pydantic import BaseModel
from sqlalchemy import Engine
from temporalio import activity

from activities.heartbeat import heartbeating
from crewline.db import get_run
from crewline.metrics import Metrics
from crewline.statuses import TERMINAL_STATUSES
from versioning.shadow import compare_runs

log = structlog.get_logger("crewline.shadow")
POLL_S = 1.0


class CompareInput(BaseModel):
    primary_run_id: str
    shadow_run_id: str


class CompareResult(BaseModel):
    compared: bool
    alerts: list[str] = []  # agents whose output diverged
    lowest_score: float | None = None
    note: str | None = None


class ShadowActivities:
    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        self._engine = engine
        self._metrics = metrics or Metrics()

    @activity.defn(name="compare_shadow")
    @heartbeating
    async def compare(self, inp: CompareInput) -> CompareResult:
        while True:
            primary = await asyncio.to_thread(get_run, self._engine, inp.primary_run_id)
            if primary is not None and primary.status in TERMINAL_STATUSES:
                break
            await asyncio.sleep(POLL_S)
        if primary.status != "COMPLETED":
            return CompareResult(compared=False, note=f"the primary ended {primary.status}")
        rows = await asyncio.to_thread(
            compare_runs, self._engine, inp.primary_run_id, inp.shadow_run_id
        )
        alerts = [r for r in rows if r.alert]
        for row in rows:
            self._metrics.shadow_comparisons.labels(row.agent).inc()
            if row.alert:
                self._metrics.shadow_divergences.labels(row.agent).inc()
        for row in alerts:
            log.warning(
                "shadow.divergence",
                run_id=row.run_id, shadow_run_id=row.shadow_run_id, agent=row.agent,
                active_version=row.active_version, candidate_version=row.candidate_version,
                score=row.score, threshold=row.threshold, reasons=row.reasons[:5],
            )  # fmt: skip
        return CompareResult(
            compared=True,
            alerts=[r.agent for r in alerts],
            lowest_score=min((r.score for r in rows), default=None),
        )
