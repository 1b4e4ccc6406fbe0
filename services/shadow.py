"""Shadowing: the candidate and its rate, calibration against the active version's own noise,
the comparison of finished shadows with their primaries, the verdicts and the report a person
decides on.

Comparisons run here, in the control plane (the reconciler calls `compare_finished`), not in the
candidate's worker: a version under test does not grade itself, and the detector that judges it
is the one this deployment runs.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from decimal import Decimal

import structlog
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from activities.tools.builtin import workspace_files
from crewline.db import session_scope
from crewline.sandbox import Sandbox
from crewline.settings import ConfigurationError
from records import ledger
from records.ledger import Charge
from records.statuses import AGENTS, TERMINAL, RunStatus
from records.tables import LedgerEntry, Run, from_pico, to_pico
from services import Context
from services.access import Principal, require
from services.errors import Conflict, versioning_on
from services.models import DivergenceDetail, DivergenceOut
from services.runs import start_workflow_for
from services.version_models import (
    AgentReport,
    Calibration,
    ShadowIn,
    ShadowState,
    VersionReport,
)
from services.versions import Versions, temporal
from versioning import deployment, shadow
from versioning.divergence.behaviour import Behaviour, compare_checks
from versioning.divergence.detector import NOISE_LIMIT, Finding, Verdict, strip_label, verdict
from versioning.divergence.judge import Judge, combine

log = structlog.get_logger("crewline.shadow")


def _state(engine: Engine, settings: object) -> ShadowState:
    config = shadow.get_config(engine)
    spent = shadow.spent_today(engine)
    return ShadowState(
        candidate=config.candidate,
        rate=config.rate,
        paused=shadow.pause_reason(settings, spent) if config.candidate else None,  # type: ignore[arg-type]
        daily_cap_usd=settings.shadow_daily_cap_usd,  # type: ignore[attr-defined]
        spent_today_usd=spent,
    )


def _spend(session: Session, run_ids: list[str]) -> Decimal:
    if not run_ids:
        return Decimal(0)
    stmt = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(
        col(LedgerEntry.run_id).in_(run_ids)
    )
    return from_pico(int(session.exec(stmt).one()))


def _report(engine: Engine, settings: object, version: str) -> VersionReport:
    with Session(engine) as session:
        shadows = list(
            session.exec(select(Run).where(col(Run.shadow_of).is_not(None), Run.version == version))
        )
        primaries = [session.get(Run, s.shadow_of) for s in shadows]
        ids = [s.run_id for s in shadows]
        pids = [p.run_id for p in primaries if p is not None]
        candidate_spend, active_spend = _spend(session, ids), _spend(session, pids)
    rows = shadow.divergences(engine, version=version, limit=100_000)
    active = shadow.active_of(rows)
    noise = shadow.noise_of(engine, active) if active else {}
    per_agent: dict[str, AgentReport] = {}
    for agent in [*AGENTS, shadow.INTENTS]:
        mine = [r for r in rows if r.agent == agent]
        alerts = [r for r in mine if r.alert]
        mine_noise = noise.get(agent, {})
        per_agent[agent] = AgentReport(
            compared=len(mine),
            alerts=len(alerts),
            alert_rate=len(alerts) / len(mine) if mine else None,
            uncertain=sum(r.verdict_status == "uncertain" for r in mine),
            worst=[
                DivergenceDetail.model_validate(
                    {
                        **DivergenceOut.of(r).model_dump(),
                        "primary_output": r.primary_output,
                        "shadow_output": r.shadow_output,
                    }
                )
                for r in sorted(alerts, key=lambda r: r.score)[:3]
            ],
            noise=mine_noise,
            noisy=sorted(k for k, v in mine_noise.items() if v >= NOISE_LIMIT),
        )

    def seconds(runs: list[Run | None]) -> list[float]:
        return [
            (r.updated_at - r.created_at).total_seconds()
            for r in runs
            if r is not None and r.status == RunStatus.COMPLETED
        ]

    def p50(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    by_status: dict[str, int] = {}
    for s in shadows:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    return VersionReport(
        version=version,
        shadow=_state(engine, settings),
        shadow_runs=len(shadows),
        by_status=by_status,
        compared_runs=len({r.shadow_run_id for r in rows}),
        per_agent=per_agent,
        intents_differ=sorted({r.run_id for r in rows if r.agent == shadow.INTENTS and r.alert}),
        candidate_spend_usd=candidate_spend,
        active_spend_usd=active_spend,
        candidate_seconds_p50=p50(seconds(list(shadows))),
        active_seconds_p50=p50(seconds(primaries)),
    )


def _uncompared(engine: Engine, limit: int) -> list[Run]:
    """Shadow runs that completed, whose primary has ended, and that have no verdicts yet."""
    with Session(engine) as session:
        compared = select(shadow.DivergenceRow.shadow_run_id).distinct()
        candidates = session.exec(
            select(Run)
            .where(
                col(Run.shadow_of).is_not(None),
                Run.status == RunStatus.COMPLETED,
                col(Run.run_id).not_in(compared),
            )
            .order_by(col(Run.updated_at))
            .limit(limit)
        ).all()
        ready = []
        for run in candidates:
            primary = session.get(Run, run.shadow_of)
            if primary is not None and primary.status in TERMINAL:
                ready.append(run)
        return ready


class Shadow:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sandbox: Sandbox | None = None
        self._judge_model: Judge | None = None

    async def state(self, principal: Principal) -> ShadowState:
        """The candidate, its rate, today's shadow spend, and why sampling is paused, if it is."""
        require(principal, "shadow.read")
        return await self.ctx.db(_state, self.ctx.settings)

    async def set_candidate(
        self, principal: Principal, version_id: str, body: ShadowIn
    ) -> ShadowState:
        """Make the version the candidate: that share of new runs re-run on it, in dry-run. Its
        worker must be serving it; rate 0 stops shadowing."""
        require(principal, "shadow.change")
        versioning_on(self.ctx.settings)
        ctx = self.ctx
        await Versions(ctx).known(version_id)
        if body.rate > 0:
            live = await temporal(ctx, deployment.live_workers(ctx.temporal, ctx.settings))
            if not live.get(version_id):
                raise Conflict(
                    f"no worker is serving {version_id}: start one with `crewline worker "
                    f"--version {version_id}` and try again (nothing was changed)"
                )
            current = (await temporal(ctx, deployment.describe(ctx.temporal, ctx.settings))).current
            if current == version_id:
                raise Conflict(f"{version_id} is the active version; shadow another")
        await ctx.db(shadow.set_config, version_id, body.rate, principal.name)
        return await ctx.db(_state, ctx.settings)

    async def stop(self, principal: Principal) -> ShadowState:
        """No more shadow runs (those in flight finish and are compared)."""
        require(principal, "shadow.change")
        versioning_on(self.ctx.settings)
        await self.ctx.db(shadow.set_config, None, 0.0, principal.name)
        return await self.ctx.db(_state, self.ctx.settings)

    async def calibrate(self, principal: Principal, runs: int) -> Calibration:
        """Re-run recent inputs on the active version itself (dry-run, shadow spend): how far
        two honest runs of one version already differ is each agent's noise floor. Answers once
        the runs are started; the verdicts arrive as they finish."""
        require(principal, "shadow.change")
        versioning_on(self.ctx.settings)
        ctx = self.ctx
        active = (await temporal(ctx, deployment.describe(ctx.temporal, ctx.settings))).current
        if active is None:
            raise Conflict("no version is active to calibrate")

        def plan() -> list[Run]:
            spent = shadow.spent_today(ctx.engine)
            left = ctx.settings.shadow_daily_cap_usd - spent
            if left <= 0:
                raise Conflict(shadow.pause_reason(ctx.settings, spent) or "shadow cap reached")
            with Session(ctx.engine) as session:
                recent = list(
                    session.exec(
                        select(Run)
                        .where(Run.status == RunStatus.COMPLETED, col(Run.shadow_of).is_(None))
                        .order_by(col(Run.created_at).desc())
                        .limit(runs)
                    )
                )
            if not recent:
                raise Conflict("no completed run to re-run yet")
            rows = [
                Run(
                    run_id=f"{r.run_id}-calib-{uuid.uuid4().hex[:6]}",
                    query=r.query,
                    budget_usd=left,
                    provider=r.provider,
                    dry_run=True,
                    shadow_of=r.run_id,
                    key_id=r.key_id,
                    version=active,
                )
                for r in recent
            ]
            with session_scope(ctx.engine) as session:
                session.add_all(rows)
            return rows

        rows = await asyncio.to_thread(plan)
        # A started job: the rows are written, their workflows start after the answer (50 starts
        # held the request 11 s); a start that never happens is repaired by the reconciler.
        ctx.detach(
            asyncio.gather(*(start_workflow_for(ctx, row) for row in rows), return_exceptions=True)
        )
        return Calibration(
            version=active, shadow_runs=[r.run_id for r in rows],
            status=f"/divergences?version={active}&alerts_only=false",
        )  # fmt: skip

    async def divergences(
        self,
        principal: Principal,
        *,
        version: str | None = None,
        agent: str | None = None,
        shadow_run_id: str | None = None,
        alerts_only: bool = True,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[DivergenceOut]:
        require(principal, "shadow.read")
        rows = await self.ctx.db(
            shadow.divergences, version=version, agent=agent, alerts_only=alerts_only,
            status=status, limit=limit, offset=offset, shadow_run_id=shadow_run_id,
        )  # fmt: skip
        return [DivergenceOut.of(r) for r in rows]

    async def report(self, principal: Principal, version_id: str) -> VersionReport:
        """How the candidate's shadow runs went: divergence per agent with the worst pairs side
        by side, its spend and latency next to the active's, runs whose side effects differ."""
        require(principal, "shadow.read")
        await Versions(self.ctx).known(version_id)
        return await self.ctx.db(_report, self.ctx.settings, version_id)

    async def compare_finished(self, limit: int = 50) -> int:
        """Score every finished shadow against its primary (stored, alert or not); how many."""
        ctx = self.ctx
        done = 0
        for run in await ctx.db(_uncompared, limit):
            assert run.shadow_of is not None
            rows = await self.compare(run.shadow_of, run.run_id)
            done += 1
            for row in rows:
                ctx.metrics.shadow_comparisons.labels(row.agent).inc()
                if row.alert:
                    ctx.metrics.shadow_divergences.labels(row.agent).inc()
                    log.warning(
                        "shadow.divergence",
                        run_id=row.run_id,
                        shadow_run_id=row.shadow_run_id,
                        agent=row.agent,
                        active_version=row.active_version,
                        candidate_version=row.candidate_version,
                        score=row.score,
                        threshold=row.threshold,
                        reasons=row.reasons[:5],
                    )
        return done

    async def compare(self, primary_id: str, shadow_id: str) -> list[shadow.DivergenceRow]:
        """Every layer on one shadow: 1-2 offline, 3 (the acceptance checks of both runs on both
        runs' files, in the sandbox), 4 (the judge, when on and under the shadow cap) on what
        1-3 left quiet; calibrated by the active version's noise; stored."""
        ctx = self.ctx
        threshold = ctx.settings.divergence_threshold
        comparison = await ctx.db(shadow.comparison_of, primary_id, shadow_id)
        noise = (
            {} if comparison.calibration
            else await ctx.db(shadow.noise_of, comparison.primary.version)
        )  # fmt: skip
        verdicts = shadow.offline_verdicts(comparison, threshold, noise)
        extra: dict[str, list[Finding]] = {agent: [] for agent in verdicts}
        notes: dict[str, list[str]] = {agent: [] for agent in verdicts}
        layers: dict[str, list[str]] = {
            agent: list(v.layers) for agent, (v, _, _) in verdicts.items()
        }
        if "coder" in verdicts:
            behaviour = await self._behaviour(comparison)
            extra["coder"] += behaviour.findings
            notes["coder"] += behaviour.notes
            if behaviour.compared:
                layers["coder"].append("behaviour")
        await self._judge(comparison, verdicts, extra, notes, layers)
        final = {
            agent: (
                verdict(agent, [*v.findings, *extra[agent]], threshold=threshold,
                        layers=tuple(layers[agent]), noise=noise.get(agent),
                        notes=tuple(notes[agent])),
                a, b,
            )
            for agent, (v, a, b) in verdicts.items()
        }  # fmt: skip
        return await ctx.db(shadow.store_verdicts, comparison, final)

    async def _behaviour(self, comparison: shadow.Comparison) -> Behaviour:
        ctx = self.ctx
        if not comparison.commands:
            return Behaviour(notes=["behaviour: neither run had acceptance checks"])
        if self._sandbox is None:
            self._sandbox = Sandbox(ctx.settings.sandbox_limits())
        available = self._sandbox.check()
        if not available.ok:
            why = f"behaviour: not run, the sandbox is unavailable ({available.reason})"
            return Behaviour(notes=[why])
        primary, candidate = comparison.primary, comparison.shadow
        files_a = await workspace_files(ctx.settings, ctx.db, primary.run_id, bool(primary.dry_run))
        files_b = await workspace_files(ctx.settings, ctx.db, candidate.run_id, True)
        return await compare_checks(self._sandbox, comparison.commands, files_a, files_b)

    def judge(self) -> Judge:
        if self._judge_model is None:
            self._judge_model = Judge(self.ctx.settings)
        return self._judge_model

    async def _judge(
        self,
        comparison: shadow.Comparison,
        verdicts: dict[str, tuple[Verdict, str, str]],
        extra: dict[str, list[Finding]],
        notes: dict[str, list[str]],
        layers: dict[str, list[str]],
    ) -> None:
        """Layer 4 on the agents layers 1-3 left quiet, if it is on and fits under the cap;
        every call ledgered as shadow spend of the shadow run (agent `judge`)."""
        ctx = self.ctx
        settings = ctx.settings
        todo = [
            agent for agent, (v, a, b) in verdicts.items()
            if agent != shadow.INTENTS and not v.alert and not extra[agent]
            and strip_label(a).strip() != strip_label(b).strip()
        ]  # fmt: skip
        if not todo:
            return
        if not settings.judge_enabled():
            for agent in todo:
                notes[agent].append(
                    f"judge: off (DIVERGENCE_JUDGE={settings.divergence_judge}"
                    + (", scripted provider" if settings.divergence_judge == "auto" else "")
                    + "): prose decisions and figures were not compared"
                )
            return
        try:
            judge = self.judge()
        except ConfigurationError as exc:
            for agent in todo:
                notes[agent].append(f"judge: not run: {exc}")
            return
        query = comparison.primary.query
        pairs = {agent: (strip_label(verdicts[agent][1]), strip_label(verdicts[agent][2]))
                 for agent in todo}  # fmt: skip
        worst = sum(
            (judge.estimate_usd(agent, query, a, b) for agent, (a, b) in pairs.items()), Decimal(0)
        )
        spent = await ctx.db(shadow.spent_today)
        if spent + worst > settings.shadow_daily_cap_usd:
            for agent in todo:
                notes[agent].append(
                    f"judge: skipped: its worst case ${worst:.6f} on top of today's shadow "
                    f"spend ${spent} would pass SHADOW_DAILY_CAP_USD "
                    f"${settings.shadow_daily_cap_usd}"
                )
            return
        run = comparison.shadow
        tag = uuid.uuid4().hex[:8]
        reservations = {
            (agent, order): Charge(
                run_id=run.run_id, workflow_id=f"judge:{run.run_id}",
                activity_id=f"{agent}:{order}:{tag}", attempt=1, agent="judge",
                provider=judge.provider.name, model=judge.model, version=run.version,
                prompt_tokens=0, completion_tokens=0, cached_tokens=0,
                cost_pusd=to_pico(judge.estimate_usd(agent, query, *pairs[agent]) / 2),
                input_per_mtok=None, output_per_mtok=None, price_source="reservation",
                usage_source="estimated", shadow=True,
            )
            for agent in todo for order in ("ab", "ba")
        }  # fmt: skip
        for charge in reservations.values():
            await ctx.db(ledger.reserve, charge)

        async def one(agent: str) -> None:
            a, b = pairs[agent]
            forward, backward = await asyncio.gather(
                judge.ask(agent, query, a, b), judge.ask(agent, query, b, a)
            )
            for order, opinion in (("ab", forward), ("ba", backward)):
                charge = reservations[(agent, order)]
                charge.model, charge.prompt_tokens = opinion.model, opinion.prompt_tokens
                charge.completion_tokens = opinion.completion_tokens
                charge.cost_pusd = to_pico(opinion.priced.cost_usd)
                charge.input_per_mtok = _str(opinion.priced.input_per_mtok)
                charge.output_per_mtok = _str(opinion.priced.output_per_mtok)
                charge.price_source = opinion.priced.source
                charge.usage_source = "estimated" if opinion.usage_estimated else "reported"
                await ctx.db(ledger.settle, charge)
            extra[agent] += combine(forward, backward)
            layers[agent].append("judge")

        results = await asyncio.gather(*(one(agent) for agent in todo), return_exceptions=True)
        for agent, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                # Its reservation stays pending: the reconciler settles it at its worst case.
                notes[agent].append(f"judge: failed ({type(result).__name__}); layers 1-3 only")
                log.warning("shadow.judge_failed", agent=agent, error=type(result).__name__)


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
