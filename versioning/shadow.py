"""Shadow runs: which runs a candidate version re-runs, what it may spend, and the comparison.

- One candidate at a time, with a rate. A salted hash of the run id decides: the same run id
  always gets the same answer, and over many ids the share sampled is the rate.
- Shadow spend is ledgered `shadow` and capped per UTC day (SHADOW_DAILY_CAP_USD); it never
  touches a user's budget. Once the cap is reached, sampling pauses and says so.
- When both runs have finished, each agent's output (and the side-effect intents against the
  primary's artifacts) is scored by the divergence detector and stored, alert or not.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal

import structlog
from sqlalchemy import Column, Engine, Text, UniqueConstraint, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from crewline.db import session_scope, utcnow
from crewline.settings import Settings
from records.runs import artifacts_of, get_run, intents_of, steps_of
from records.statuses import AGENTS
from records.tables import LedgerEntry, Run, from_pico
from versioning.divergence import compare

log = structlog.get_logger("crewline.shadow")
INTENTS = "intents"  # the divergence record comparing side effects


class ShadowConfig(SQLModel, table=True):
    """The one shadow setting of the deployment (row id 1)."""

    __tablename__ = "shadow_config"

    id: int = Field(default=1, primary_key=True)
    candidate: str | None = Field(default=None, max_length=32)
    rate: float = 0.0
    # Kept across candidates: a run id's sampling answer never changes.
    salt: str = Field(default_factory=lambda: secrets.token_hex(8), max_length=32)
    updated_at: datetime = Field(default_factory=utcnow)
    updated_by: str | None = Field(default=None, max_length=200)


class DivergenceRow(SQLModel, table=True):
    """One agent's output (or the intents) of a primary run vs its shadow, scored."""

    __tablename__ = "divergence"
    __table_args__ = (UniqueConstraint("shadow_run_id", "agent", name="uq_div_agent"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)  # the primary
    shadow_run_id: str = Field(max_length=80)
    agent: str = Field(index=True, max_length=32)
    active_version: str | None = Field(default=None, max_length=32)
    candidate_version: str | None = Field(default=None, index=True, max_length=32)
    score: float
    threshold: float
    alert: bool = Field(index=True)
    reasons_json: str = Field(sa_column=Column(Text, nullable=False))
    primary_output: str = Field(sa_column=Column(Text, nullable=False))
    shadow_output: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def reasons(self) -> list[str]:
        return list(json.loads(self.reasons_json))


def sampled(run_id: str, salt: str, rate: float) -> bool:
    """Deterministic: the first 64 bits of SHA-256(salt, run id) as a fraction, below the rate."""
    digest = hashlib.sha256(f"{salt}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def get_config(engine: Engine) -> ShadowConfig:
    with Session(engine) as session:
        found = session.get(ShadowConfig, 1)
    if found is not None:
        return found
    try:
        with session_scope(engine) as session:
            session.add(ShadowConfig())
    except IntegrityError:
        pass  # created concurrently
    with Session(engine) as session:
        created = session.get(ShadowConfig, 1)
    assert created is not None
    return created


def set_config(engine: Engine, candidate: str | None, rate: float, by: str | None) -> ShadowConfig:
    get_config(engine)
    with session_scope(engine) as session:
        row = session.get(ShadowConfig, 1)
        assert row is not None
        row.candidate, row.rate = (candidate, rate) if rate > 0 else (None, 0.0)
        row.updated_at, row.updated_by = utcnow(), by
        session.add(row)
    return row


def spent_today(engine: Engine) -> Decimal:
    midnight = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
    with Session(engine) as session:
        stmt = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(
            col(LedgerEntry.shadow).is_(True), col(LedgerEntry.created_at) >= midnight
        )
        return from_pico(int(session.exec(stmt).one()))


@dataclass(frozen=True)
class Decision:
    shadow: bool
    candidate: str | None = None
    budget_usd: Decimal | None = None  # what is left of today's cap
    why_not: str | None = None


def decide(engine: Engine, settings: Settings, run_id: str) -> Decision:
    """Whether this run gets a shadow, on which version, with how much of today's cap."""
    config = get_config(engine)
    if config.candidate is None or config.rate <= 0:
        return Decision(False, why_not="no shadow candidate")
    if not sampled(run_id, config.salt, config.rate):
        return Decision(False, config.candidate, why_not="not sampled")
    spent = spent_today(engine)
    left = settings.shadow_daily_cap_usd - spent
    if left <= 0:
        return Decision(False, config.candidate, why_not=pause_reason(settings, spent))
    return Decision(True, config.candidate, budget_usd=left)


def pause_reason(settings: Settings, spent: Decimal) -> str | None:
    """Why sampling is paused at today's shadow spend `spent`, or None if it is not."""
    if spent < settings.shadow_daily_cap_usd:
        return None
    return (
        f"sampling paused: today's shadow spend ${spent} reached SHADOW_DAILY_CAP_USD "
        f"${settings.shadow_daily_cap_usd}; it resumes at 00:00 UTC"
    )


def shadow_run_of(engine: Engine, run_id: str) -> Run | None:
    with Session(engine) as session:
        return session.exec(select(Run).where(Run.shadow_of == run_id)).first()


def _intents_text(engine: Engine, run_id: str, dry_run: bool) -> str:
    """Side effects as comparable lines: intents of a dry run, artifacts of a real one."""
    if dry_run:
        rows = []
        for intent in intents_of(engine, run_id):
            args = json.loads(intent.args_json)
            content = str(args.get("content", ""))
            digest = hashlib.sha256(content.encode()).hexdigest()[:12] if content else "-"
            rows.append(f"{intent.tool} {args.get('path', '')} {digest}")
        return "\n".join(sorted(rows))
    return "\n".join(
        sorted(f"write_file {a.path} {a.sha256[:12]}" for a in artifacts_of(engine, run_id))
    )


def compare_runs(
    engine: Engine, primary_id: str, shadow_id: str, thresholds: dict[str, float] | None = None
) -> list[DivergenceRow]:
    """Score the shadow against its primary per agent and on side effects; store the verdicts
    (idempotent: a retried comparison rewrites its rows)."""
    primary, shadow = get_run(engine, primary_id), get_run(engine, shadow_id)
    if primary is None or shadow is None:
        raise LookupError(f"run {primary_id if primary is None else shadow_id} not found")
    outputs_a = {s.agent: s.output or "" for s in steps_of(engine, primary_id)}
    outputs_b = {s.agent: s.output or "" for s in steps_of(engine, shadow_id)}
    pairs = [(agent, outputs_a[agent], outputs_b[agent]) for agent in AGENTS
             if agent in outputs_a and agent in outputs_b]  # fmt: skip
    pairs.append(
        (INTENTS, _intents_text(engine, primary_id, bool(primary.dry_run)),
         _intents_text(engine, shadow_id, True))
    )  # fmt: skip
    rows = []
    for agent, a, b in pairs:
        if agent == INTENTS:
            same = a == b
            score, threshold = (1.0 if same else 0.0), 0.5
            reasons = [] if same else ["intents: v2's side effects differ from v1's"]
        else:
            verdict = compare(agent, a, b, query=primary.query, thresholds=thresholds)
            score, threshold, reasons = verdict.score, verdict.threshold, verdict.reasons
        rows.append(
            DivergenceRow(
                run_id=primary_id, shadow_run_id=shadow_id, agent=agent,
                active_version=primary.version, candidate_version=shadow.version,
                score=score, threshold=threshold, alert=score < threshold,
                reasons_json=json.dumps(reasons), primary_output=a[:20_000],
                shadow_output=b[:20_000],
            )
        )  # fmt: skip
    with session_scope(engine) as session:
        for old in session.exec(
            select(DivergenceRow).where(DivergenceRow.shadow_run_id == shadow_id)
        ):
            session.delete(old)
        session.flush()
        session.add_all(rows)
    return rows


def divergences(
    engine: Engine,
    *,
    version: str | None = None,
    agent: str | None = None,
    run_id: str | None = None,
    shadow_run_id: str | None = None,
    alerts_only: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[DivergenceRow]:
    with Session(engine) as session:
        stmt = select(DivergenceRow)
        if version is not None:
            stmt = stmt.where(DivergenceRow.candidate_version == version)
        if agent is not None:
            stmt = stmt.where(DivergenceRow.agent == agent)
        if run_id is not None:
            stmt = stmt.where(DivergenceRow.run_id == run_id)
        if shadow_run_id is not None:
            stmt = stmt.where(DivergenceRow.shadow_run_id == shadow_run_id)
        if alerts_only:
            stmt = stmt.where(col(DivergenceRow.alert).is_(True))
        stmt = stmt.order_by(col(DivergenceRow.score), col(DivergenceRow.id).desc())
        return list(session.exec(stmt.offset(offset).limit(limit)))
