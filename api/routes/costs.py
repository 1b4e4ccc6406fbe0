"""`/costs`: spend totals grouped by agent, model, day, run, version or key (a `run` key: its own
runs' only) — thin over `services.costs`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.security import AUTH_RESPONSES, CanReadCosts
from records.ledger import GroupBy
from services import ServicesDep
from services.models import MAX_OFFSET, CostReport, Timestamp

router = APIRouter(tags=["costs"], responses=AUTH_RESPONSES)


@router.get("/costs", response_model=CostReport)
async def cost_report(
    services: ServicesDep,
    key: CanReadCosts,
    group_by: GroupBy = "agent",
    since: Annotated[
        Timestamp | None, Query(description="inclusive, ISO 8601; no zone means UTC")
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="exclusive, ISO 8601; no zone means UTC")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CostReport:
    return await services.costs.report(
        key, group_by, since=since, until=until, limit=limit, offset=offset
    )
