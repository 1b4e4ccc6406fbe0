"""Costs: spend per day stacked by agent, model, version or key; the top runs; spend per key;
budget use of the runs in flight — charts with the numbers behind them, and a CSV of them."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from dashboard import charts
from dashboard.pages import page_scope
from dashboard.sessions import Viewer, viewer
from dashboard.web import page
from services import Services, ServicesDep

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(page_scope)])
ViewerDep = Annotated[Viewer, Depends(viewer)]
By = Literal["agent", "model", "version", "key"]


async def _report(services: Services, v: Viewer, by: By, days: int) -> dict[str, Any]:
    spend = await services.costs.daily(v.principal, by, days)
    series = charts.series_of(spend.groups, spend.days, spend.cells)
    return {
        "by": by, "days": days, "columns": spend.days, "series": series, "cells": spend.cells,
        "totals": spend.totals, "total": spend.total,
        "chart": charts.stacked_bars(f"Spend per day by {by}, last {days} days",
                                     spend.days, series),
        "top_runs": spend.top_runs, "per_key": spend.per_key, "utilisation": spend.in_flight,
        "meter": charts.meter,
    }  # fmt: skip


@router.get("/costs", response_class=HTMLResponse)
async def costs_page(
    request: Request, v: ViewerDep, services: ServicesDep,
    by: By = "agent", days: Annotated[int, Query(ge=1, le=366)] = 14,
) -> HTMLResponse:  # fmt: skip
    return await page(request, "costs.html", v, **await _report(services, v, by, days))


@router.get("/costs.csv")
async def costs_csv(
    v: ViewerDep, services: ServicesDep,
    by: By = "agent", days: Annotated[int, Query(ge=1, le=366)] = 14,
) -> Response:  # fmt: skip
    """The numbers behind the chart: one row per day and group."""
    spend = await services.costs.daily(v.principal, by, days)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", by, "usd"])
    for (day, group), usd in sorted(spend.cells.items()):
        writer.writerow([day, group, f"{usd:f}"])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="crewline-costs-by-{by}.csv"'},
    )
