"""The reconciler: the control plane's pass that makes the app database agree with Temporal again
after anything died — the API between a run's row and its workflow's start, a worker or the
database while a run ended, the Temporal server while a step's result was on its way.

Each pass (at start-up, then every `RECONCILE_EVERY_S`, in every API process: everything it does
is idempotent) it:
1. starts the workflow of a queued run row that has none (a run accepted by an API that died
   before it started it; a sampled run's shadow), with the run id as workflow id — at most once;
2. closes the rows of runs whose workflow has ended, from Temporal's record of it;
3. settles what ended runs' calls still hold (pending reservations: the call's worst case, marked
   estimated, with the reason);
4. compares finished shadow runs with their primaries;
5. on a fresh deployment, makes the one version a worker serves current.

It reports what it fixed (a log line, `/health`, `POST /admin/reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.service import RPCError, RPCStatusCode

from crewline.db import utcnow
from records import ledger
from records.statuses import OPEN, TERMINAL, RunStatus
from records.tables import LedgerEntry, Run
from services import Context
from services.access import Principal, require
from services.runs import close_if_ended, start_workflow_for
from services.shadow import Shadow
from services.versions import Versions

log = structlog.get_logger("crewline.reconcile")

# A queued row younger than this may still be being started by the request that wrote it.
START_GRACE = timedelta(seconds=10)
# Open rows checked against Temporal per pass (oldest-updated first).
OPEN_PER_PASS = 200


@dataclass
class Report:
    at: datetime = field(default_factory=utcnow)
    started: list[str] = field(default_factory=list)  # queued rows whose workflow was missing
    closed: list[str] = field(default_factory=list)  # rows closed from Temporal's record
    settled_calls: int = 0  # pending reservations of ended runs, settled
    compared_shadows: int = 0
    bootstrapped: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def fixed(self) -> int:
        return len(self.started) + len(self.closed) + self.settled_calls

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat(), "fixed": self.fixed}


def _queued(engine: Engine, older_than: datetime) -> list[Run]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Run)
                .where(Run.status == RunStatus.QUEUED, col(Run.created_at) < older_than)
                .order_by(col(Run.created_at))
                .limit(OPEN_PER_PASS)
            )
        )


def _open(engine: Engine) -> list[Run]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Run)
                .where(col(Run.status).in_(OPEN), Run.status != RunStatus.QUEUED)
                .order_by(col(Run.updated_at))
                .limit(OPEN_PER_PASS)
            )
        )


def _pending_of_ended(engine: Engine) -> list[str]:
    """Runs that have ended but whose ledger still holds pending reservations."""
    with Session(engine) as session:
        ids = session.exec(
            select(LedgerEntry.run_id)
            .where(LedgerEntry.state == ledger.PENDING)
            .distinct()
            .limit(OPEN_PER_PASS)
        ).all()
        ended = session.exec(
            select(Run.run_id).where(col(Run.run_id).in_(ids), col(Run.status).in_(TERMINAL))
        ).all()
    return list(ended)


class Reconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.last: Report | None = None
        self._lock = asyncio.Lock()

    async def once(self) -> Report:
        """One pass; what it fixed."""
        async with self._lock:
            report = Report()
            for step in (self._start_missing, self._close_ended, self._settle_ended):
                try:
                    await step(report)
                except (RPCError, RuntimeError, OSError) as exc:
                    report.errors.append(f"{step.__name__.strip('_')}: {str(exc)[:200]}")
                except Exception as exc:  # the database may be down: next pass
                    report.errors.append(f"{step.__name__.strip('_')}: {type(exc).__name__}")
            with contextlib.suppress(Exception):
                report.compared_shadows = await Shadow(self.ctx).compare_finished()
            with contextlib.suppress(Exception):
                done = await Versions(self.ctx).bootstrap()
                if done is not None and done.changed:
                    report.bootstrapped = done.to_version
                    log.info("version.bootstrapped", version=done.to_version)
            if report.fixed:
                log.warning(
                    "reconcile.fixed", started=report.started, closed=report.closed,
                    settled_calls=report.settled_calls,
                )  # fmt: skip
            self.last = report
            return report

    async def _start_missing(self, report: Report) -> None:
        for run in await self.ctx.db(_queued, utcnow() - START_GRACE):
            try:
                if await start_workflow_for(self.ctx, run):
                    report.started.append(run.run_id)
            except RPCError as exc:
                if exc.status != RPCStatusCode.ALREADY_EXISTS:
                    raise

    async def _close_ended(self, report: Report) -> None:
        for run in await self.ctx.db(_open):
            after = await close_if_ended(self.ctx, run)
            if after.status != run.status:
                report.closed.append(run.run_id)

    async def _settle_ended(self, report: Report) -> None:
        for run_id in await self.ctx.db(_pending_of_ended):
            report.settled_calls += len(await self.ctx.db(ledger.settle_lost, run_id=run_id))

    async def run_forever(self, every_s: float) -> None:
        """Pass after pass until cancelled (the API's lifespan owns the task)."""
        while True:
            with contextlib.suppress(Exception):
                await self.once()
            await asyncio.sleep(every_s)

    async def on_request(self, principal: Principal) -> Report:
        """A pass now, for an admin (`POST /admin/reconcile`, `crewline reconcile`)."""
        require(principal, "admin.reconcile")
        return await self.once()

    def health(self) -> dict[str, Any]:
        if self.last is None:
            return {"ok": True, "note": "no pass yet"}
        return {"ok": not self.last.errors, **self.last.as_dict()}
