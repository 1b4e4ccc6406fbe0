"""Costs: spend per day stacked by agent, model, version or key; the top runs; spend per key;
budget use of the runs in flight — charts with the numbers behind them, and a CSV of them."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from costs import ledger
from crewline.db import Run
from dashboard import charts
from dashboard.sessions import Viewer, viewer
from dashboard.web import page

router = APIRouter(prefix="/ui", include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(viewer)]
By = Literal["agent", "model", "version", "key"]
IN_FLIGHT = ("QUEUED", "RUNNING", "WAITING_FOR_BUDGET")


def _days(days: int) -> list[str]:
    today = datetime.now(UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def _report(engine: Engine, v: Viewer, by: By, days: int) -> dict[str, Any]:
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days - 1
    )
    own = v.principal.runs_of
    rows = ledger.daily(engine, by, since=since, key_id=own)
    cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for day, group, usd in rows:
        cells[(day, group)] += usd
        totals[group] += usd
    names = sorted(totals, key=lambda g: -totals[g])
    columns = _days(days)
    top_runs, _, _ = ledger.grouped(engine, "run", since=since, limit=10, key_id=own)
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
                .where(col(Run.status).in_(IN_FLIGHT), *([Run.key_id == own] if own else []))
                .order_by(col(Run.created_at).desc())
                .limit(50)
            )
        )
    spent = ledger.spent_by_run(engine, [r.run_id for r in flying])
    utilisation = [
        {
            "run": r,
            "spent": spent.get(r.run_id, Decimal(0)),
            "fraction": float(spent.get(r.run_id, Decimal(0)) / r.budget_usd)
            if r.budget_usd
            else 0.0,
        }
        for r in flying
    ]
    series = charts.series_of(names, columns, cells)
    return {
        "by": by, "days": days, "columns": columns, "series": series, "cells": cells,
        "totals": totals, "total": sum(totals.values(), Decimal(0)),
        "chart": charts.stacked_bars(f"Spend per day by {by}, last {days} days", columns, series),
        "top_runs": [{**t, "query": queries.get(t["key"], "")} for t in top_runs],
        "per_key": per_key, "utilisation": utilisation, "meter": charts.meter,
    }  # fmt: skip


@router.get("/costs", response_class=HTMLResponse)
async def costs_page(
    request: Request, v: ViewerDep,
    by: By = "agent", days: Annotated[int, Query(ge=1, le=366)] = 14,
) -> HTMLResponse:  # fmt: skip
    report = await run_in_threadpool(_report, request.app.state.engine, v, by, days)
    return page(request, "costs.html", v, **report)


@router.get("/costs.csv")
async def costs_csv(
    request: Request, v: ViewerDep,
    by: By = "agent", days: Annotated[int, Query(ge=1, le=366)] = 14,
) -> Response:  # fmt: skip
    """The numbers behind the chart: one row per day and group."""
    report = await run_in_threadpool(_report, request.app.state.engine, v, by, days)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", by, "usd"])
    for (day, group), usd in sorted(report["cells"].items()):
        writer.writerow([day, group, f"{usd:f}"])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="crewline-costs-by-{by}.csv"'},
    )
