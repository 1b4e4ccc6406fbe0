"""Shadowing: make a version the candidate (`POST /versions/{id}/shadow`), stop
(`DELETE /versions/shadow`), calibrate, read verdicts (`GET /divergences`) and the report a person
decides on (`GET /versions/{id}/report`) — thin over `services.shadow`. Included before the
`/versions/{id}` routes (path order)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from api.errors import documented
from api.routes.versions import VersionId
from api.security import AUTH_RESPONSES, CanChangeShadow, CanReadShadow
from services import ServicesDep
from services.models import DivergenceOut
from services.version_models import (
    CalibrateIn,
    Calibration,
    ShadowIn,
    ShadowState,
    VersionReport,
)

router = APIRouter(tags=["shadow"], responses=AUTH_RESPONSES)


@router.get("/versions/shadow", response_model=ShadowState)
async def read_shadow(key: CanReadShadow, services: ServicesDep) -> ShadowState:
    """The candidate, its rate, today's shadow spend, and why sampling is paused, if it is."""
    return await services.shadow.state(key)


@router.post(
    "/versions/{version_id}/shadow", response_model=ShadowState, responses=documented(404, 409, 503)
)
async def start_shadowing(
    key: CanChangeShadow, version_id: VersionId, body: ShadowIn, services: ServicesDep
) -> ShadowState:
    """Make the version the candidate: that share of new runs re-run on it, in dry-run. Its
    worker must be serving it (409 otherwise); rate 0 stops shadowing."""
    return await services.shadow.set_candidate(key, version_id, body)


@router.delete("/versions/shadow", response_model=ShadowState)
async def stop_shadowing(key: CanChangeShadow, services: ServicesDep) -> ShadowState:
    """No more shadow runs (those in flight finish and are compared)."""
    return await services.shadow.stop(key)


@router.post(
    "/shadow/calibrate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Calibration,
    responses=documented(409, 503),
)
async def calibrate(key: CanChangeShadow, body: CalibrateIn, services: ServicesDep) -> Calibration:
    """Re-run recent inputs on the active version itself (dry-run, shadow spend): how far two
    honest runs of one version already differ is each agent's noise floor. The verdicts arrive
    as the runs finish (`GET /divergences?version=<active>&alerts_only=false`)."""
    return await services.shadow.calibrate(key, body.runs)


@router.get("/divergences", response_model=list[DivergenceOut])
async def list_divergences(
    key: CanReadShadow,
    services: ServicesDep,
    version: Annotated[str | None, Query(description="the candidate version")] = None,
    agent: Annotated[str | None, Query()] = None,
    shadow_run_id: Annotated[str | None, Query()] = None,
    alerts_only: Annotated[bool, Query()] = True,
    status: Annotated[
        Literal["alert", "uncertain", "quiet"] | None,
        Query(description="only verdicts of this status (overrides alerts_only)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DivergenceOut]:
    """Verdicts of shadow comparisons, lowest score first: alerts only by default;
    `status=uncertain` lists the pairs a layer spoke on but could not be trusted (a judge that
    flipped with the order, a signal that is the active version's own noise), apart from alerts.
    Each verdict names the layer of every finding and the layers that ran."""
    return await services.shadow.divergences(
        key, version=version, agent=agent, shadow_run_id=shadow_run_id,
        alerts_only=alerts_only and status is None, status=status, limit=limit, offset=offset,
    )  # fmt: skip


@router.get(
    "/versions/{version_id}/report", response_model=VersionReport, responses=documented(404)
)
async def version_report(
    key: CanReadShadow, version_id: VersionId, services: ServicesDep
) -> VersionReport:
    """What a person needs to promote or drop a candidate."""
    return await services.shadow.report(key, version_id)
