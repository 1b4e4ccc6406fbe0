"""Shadowing: make a version the candidate (`POST /versions/{id}/shadow`), stop
(`DELETE /versions/shadow`), read verdicts (`GET /divergences`) and the report a person decides
on (`GET /versions/{id}/report`). Included before `/versions/{id}` routes (path order)."""

from __future__ import annotations

import statistics
import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StrictFloat, field_validator
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from api.deps import EngineDep, MetricsDep, SettingsDep, TemporalDep
from api.errors import documented
from api.routes.versions import VersionId, _known, _temporal
from api.schemas import DivergenceDetail, DivergenceOut, Usd
from api.security import AUTH_RESPONSES, Admin, Reader
from api.shadow import start_shadow_run
from crewline.db import LedgerEntry, Run, from_pico
from crewline.settings import AGENTS, Settings
from versioning import deployment, shadow

router = APIRouter(tags=["shadow"], responses=AUTH_RESPONSES)


class ShadowIn(BaseModel):
    rate: StrictFloat = Field(ge=0, le=1, allow_inf_nan=False, description="share of runs, 0 stops")


class ShadowState(BaseModel):
    candidate: str | None
    rate: float
    paused: str | None = None
    daily_cap_usd: Usd
    spent_today_usd: Usd


def state(settings: Settings, engine: Engine) -> ShadowState:
    config = shadow.get_config(engine)
    spent = shadow.spent_today(engine)
    return ShadowState(
        candidate=config.candidate,
        rate=config.rate,
        paused=shadow.pause_reason(settings, spent) if config.candidate else None,
        daily_cap_usd=settings.shadow_daily_cap_usd,
        spent_today_usd=spent,
    )


@router.get("/versions/shadow", response_model=ShadowState)
def read_shadow(key: Reader, settings: SettingsDep, engine: EngineDep) -> ShadowState:
    """The candidate, its rate, today's shadow spend, and why sampling is paused, if it is."""
    return state(settings, engine)


@router.post(
    "/versions/{version_id}/shadow", response_model=ShadowState, responses=documented(404, 409, 503)
)
async def start_shadowing(
    key: Admin,
    version_id: VersionId,
    body: ShadowIn,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> ShadowState:
    """Make the version the candidate: that share of new runs re-run on it, in dry-run. Its
    worker must be serving it (409 otherwise); rate 0 stops shadowing."""
    await run_in_threadpool(_known, engine, version_id)
    if body.rate > 0:
        live = await _temporal(settings, deployment.live_workers(client, settings))
        if not live.get(version_id):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"no worker is serving {version_id}: start one with `crewline worker --version "
                f"{version_id}` and try again (nothing was changed)",
            )
        current = (await _temporal(settings, deployment.describe(client, settings))).current
        if current == version_id:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"{version_id} is the active version; shadow another"
            )
    await run_in_threadpool(shadow.set_config, engine, version_id, body.rate, key.name)
    return await run_in_threadpool(state, settings, engine)


@router.delete("/versions/shadow", response_model=ShadowState)
def stop_shadowing(key: Admin, settings: SettingsDep, engine: EngineDep) -> ShadowState:
    """No more shadow runs (those in flight finish and are compared)."""
    shadow.set_config(engine, None, 0.0, key.name)
    return state(settings, engine)


class CalibrateIn(BaseModel):
    runs: int = Field(default=5, ge=1, le=50, description="recent completed runs to re-run")

    @field_validator("runs", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true is not the integer 1
            raise ValueError("must be an integer")
        return value


class Calibration(BaseModel):
    version: str
    shadow_runs: list[str]


@router.post(
    "/shadow/calibrate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Calibration,
    responses=documented(409, 503),
)
async def calibrate(
    key: Admin,
    body: CalibrateIn,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    metrics: MetricsDep,
) -> Calibration:
    """Re-run recent inputs on the active version itself (dry-run, shadow spend): how far two
    honest runs of one version already differ is each agent's noise floor. The verdicts arrive
    as the runs finish (`GET /divergences?version=<active>&alerts_only=false`)."""
    active = (await _temporal(settings, deployment.describe(client, settings))).current
    if active is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "no version is active to calibrate")
    with Session(engine) as session:
        recent = list(
            session.exec(
                select(Run)
                .where(Run.status == "COMPLETED", col(Run.shadow_of).is_(None))
                .order_by(col(Run.created_at).desc())
                .limit(body.runs)
            )
        )
    if not recent:
        raise HTTPException(status.HTTP_409_CONFLICT, "no completed run to re-run yet")
    spent = shadow.spent_today(engine)
    left = settings.shadow_daily_cap_usd - spent
    if left <= 0:
        raise HTTPException(status.HTTP_409_CONFLICT, shadow.pause_reason(settings, spent))
    started = []
    for run in recent:
        run_id = f"{run.run_id}-calib-{uuid.uuid4().hex[:6]}"
        if await start_shadow_run(client, settings, engine, run, active, left, run_id, metrics):
            started.append(run_id)
    return Calibration(version=active, shadow_runs=started)


@router.get("/divergences", response_model=list[DivergenceOut])
def list_divergences(
    key: Reader,
    engine: EngineDep,
    version: Annotated[str | None, Query(description="the candidate version")] = None,
    agent: Annotated[str | None, Query()] = None,
    shadow_run_id: Annotated[str | None, Query()] = None,
    alerts_only: Annotated[bool, Query()] = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DivergenceOut]:
    """Verdicts of shadow comparisons, lowest score first (alerts only, by default)."""
    rows = shadow.divergences(
        engine, version=version, agent=agent, alerts_only=alerts_only, limit=limit,
        offset=offset, shadow_run_id=shadow_run_id,
    )  # fmt: skip
    return [DivergenceOut.of(r) for r in rows]


class AgentReport(BaseModel):
    compared: int
    alerts: int
    alert_rate: float | None
    worst: list[DivergenceDetail]


class VersionReport(BaseModel):
    version: str
    shadow: ShadowState
    shadow_runs: int
    by_status: dict[str, int]
    compared_runs: int
    per_agent: dict[str, AgentReport]
    intents_differ: list[str]
    candidate_spend_usd: Usd
    active_spend_usd: Usd  # the primaries of the shadowed runs
    candidate_seconds_p50: float | None
    active_seconds_p50: float | None


def _spend(session: Session, run_ids: list[str]) -> Decimal:
    if not run_ids:
        return Decimal(0)
    stmt = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(
        col(LedgerEntry.run_id).in_(run_ids)
    )
    return from_pico(int(session.exec(stmt).one()))


def _report(settings: Settings, engine: Engine, version: str) -> VersionReport:
    with Session(engine) as session:
        shadows = list(
            session.exec(select(Run).where(col(Run.shadow_of).is_not(None), Run.version == version))
        )
        primaries = [session.get(Run, s.shadow_of) for s in shadows]
        ids = [s.run_id for s in shadows]
        pids = [p.run_id for p in primaries if p is not None]
        candidate_spend, active_spend = _spend(session, ids), _spend(session, pids)
    rows = shadow.divergences(engine, version=version, limit=100_000)
    per_agent: dict[str, AgentReport] = {}
    for agent in [*AGENTS, shadow.INTENTS]:
        mine = [r for r in rows if r.agent == agent]
        alerts = [r for r in mine if r.alert]
        per_agent[agent] = AgentReport(
            compared=len(mine),
            alerts=len(alerts),
            alert_rate=len(alerts) / len(mine) if mine else None,
            worst=[
                DivergenceDetail.model_validate({**r.model_dump(), "reasons": r.reasons})
                for r in sorted(alerts, key=lambda r: r.score)[:3]
            ],
        )
    seconds = lambda runs: [  # noqa: E731
        (r.updated_at - r.created_at).total_seconds() for r in runs
        if r is not None and r.status == "COMPLETED"
    ]  # fmt: skip
    p50 = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    by_status: dict[str, int] = {}
    for s in shadows:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    return VersionReport(
        version=version,
        shadow=state(settings, engine),
        shadow_runs=len(shadows),
        by_status=by_status,
        compared_runs=len({r.shadow_run_id for r in rows}),
        per_agent=per_agent,
        intents_differ=sorted({r.run_id for r in rows if r.agent == shadow.INTENTS and r.alert}),
        candidate_spend_usd=candidate_spend,
        active_spend_usd=active_spend,
        candidate_seconds_p50=p50(seconds(shadows)),
        active_seconds_p50=p50(seconds(primaries)),
    )


@router.get(
    "/versions/{version_id}/report", response_model=VersionReport, responses=documented(404)
)
def version_report(
    key: Reader, version_id: VersionId, settings: SettingsDep, engine: EngineDep
) -> Any:
    """What a person needs to promote or drop a candidate: how its shadow runs went, divergence
    per agent with the worst examples side by side, its spend and latency next to the active's,
    and the runs whose side effects would differ."""
    _known(engine, version_id)
    return _report(settings, engine, version_id)
