"""Costs: totals grouped by agent, model, day, run, version or key (`GET /costs`,
`crewline costs`), and what the dashboard charts — spend per day, top runs, spend per key, budget
use of the runs in flight. All of it is read from the ledger (`records.ledger`); a `run` key sees
its own runs' spend only."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from records import ledger
from records.ledger import GroupBy
from records.statuses import OPEN
from records.tables import Run
from services import Context
from services.access import Principal, require
from services.errors import invalid
from services.models import CostGroup, CostReport


@dataclass
class DailySpend:
    """Spend per UTC day and group, and what sits around it on the costs page."""

    by: str
    days: list[str]
    cells: dict[tuple[str, str], Decimal]
    totals: dict[str, Decimal]
    top_runs: list[dict[str, Any]]
    per_key: list[dict[str, Any]]
    in_flight: list[dict[str, Any]] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return sorted(self.totals, key=lambda g: -self.totals[g])

    @property
    def total(self) -> Decimal:
        return sum(self.totals.values(), Decimal(0))


def _days(days: int) -> list[str]:
    today = datetime.now(UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def _daily(engine: Engine, own: str | None, by: GroupBy, days: int) -> DailySpend:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = midnight - timedelta(days=days - 1)
    cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for day, group, usd in ledger.daily(engine, by, since=since, key_id=own):
        cells[(day, group)] += usd
        totals[group] += usd
    # The runs people started: a shadow run (same query, the candidate's spend) is not one.
    top_runs, _, _ = ledger.grouped(engine, "run", since=since, limit=10, key_id=own, shadow=False)
    per_key, _, _ = ledger.grouped(engine, "key", since=since, limit=50, key_id=own)
    with Session(engine) as session:
        queries = {
            r.run_id: r.query
            for r in session.exec(
                select(Run).where(col(Run.run_id).in_([t["key"] for t in top_runs]))
            )
        }
        flying = list(
            session.exec(
                select(Run)
                .where(col(Run.status).in_(OPEN), *([Run.key_id == own] if own else []))
                .order_by(col(Run.created_at).desc())
                .limit(50)
            )
        )
    spent = ledger.spent_by_run(engine, [r.run_id for r in flying])
    in_flight = [
        {
            "run": r,
            "spent": spent.get(r.run_id, Decimal(0)),
            "fraction": float(spent.get(r.run_id, Decimal(0)) / r.budget_usd)
            if r.budget_usd
            else 0.0,
        }
        for r in flying
    ]
    return DailySpend(
        by=by, days=_days(days), cells=dict(cells), totals=dict(totals),
        top_runs=[{**t, "query": queries.get(t["key"], "")} for t in top_runs],
        per_key=per_key, in_flight=in_flight,
    )  # fmt: skip


class Costs:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def report(
        self,
        principal: Principal,
        group_by: GroupBy = "agent",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> CostReport:
        require(principal, "costs.read")
        if since and until and since > until:
            raise invalid(("query", "until"), "until must be after since", str(until))
        items, total, groups = await self.ctx.db(
            ledger.grouped, group_by, since=since, until=until, limit=limit, offset=offset,
            key_id=principal.runs_of,
        )  # fmt: skip
        return CostReport(
            group_by=group_by, total_usd=total, groups=groups, limit=limit, offset=offset,
            items=[CostGroup(**item) for item in items],
        )  # fmt: skip

    async def daily(self, principal: Principal, by: GroupBy, days: int) -> DailySpend:
        require(principal, "costs.read")
        return await self.ctx.db(_daily, principal.runs_of, by, days)
