"""Shadow runs: which runs a candidate version re-runs, what it may spend, and the comparison.

- One candidate at a time, with a rate. A salted hash of the run id decides: the same run id
  always gets the same answer, and over many ids the share sampled is the rate.
- Shadow spend is ledgered `shadow` and capped per UTC day (SHADOW_DAILY_CAP_USD); it never
  touches a user's budget. Once the cap is reached, sampling pauses and says so.
- When both runs have finished, each agent's output (and the side effects, as data) is scored
  by the divergence detector and stored, alert or not, with the layer of each finding. Reruns of
  the active version against itself (calibration) are stored the same way; how often each
  signal fires there is that agent's noise (`noise_of`), and a noisy signal is reported as
  uncertain instead of alerting.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Column, Engine, Text, UniqueConstraint, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from crewline.db import session_scope, utcnow
from crewline.settings import Settings
from records.runs import artifacts_of, checks_of, get_run, intents_of, steps_of
from records.statuses import AGENTS
from records.tables import LedgerEntry, Run, from_pico
from versioning.divergence.detector import (
    DEFAULT_THRESHOLD,
    Finding,
    Verdict,
    compare,
    verdict,
)

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
    # "alert", "uncertain" (a layer spoke but cannot be trusted here) or "quiet"; None on rows
    # stored before layers existed.
    status: str | None = Field(default=None, max_length=16)
    reasons_json: str = Field(sa_column=Column(Text, nullable=False))
    # Each finding with its layer, signal, confidence and detail; the layers that ran; why a
    # layer did not run (no checks, judge over the cap …).
    findings_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    layers: str | None = Field(default=None, max_length=200)
    notes_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    primary_output: str = Field(sa_column=Column(Text, nullable=False))
    shadow_output: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def reasons(self) -> list[str]:
        return list(json.loads(self.reasons_json))

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list(json.loads(self.findings_json or "[]"))

    @property
    def notes(self) -> list[str]:
        return list(json.loads(self.notes_json or "[]"))

    @property
    def verdict_status(self) -> str:
        return self.status or ("alert" if self.alert else "quiet")


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


@dataclass(frozen=True)
class Comparison:
    """What a shadow is compared on: each agent's output in both runs, their side effects as
    (tool, target) data, and both runs' acceptance checks."""

    primary: Run
    shadow: Run
    outputs: list[tuple[str, str, str]]  # (agent, active output, candidate output)
    effects_a: list[tuple[str, str]]
    effects_b: list[tuple[str, str]]
    commands: list[str]

    @property
    def calibration(self) -> bool:
        """A rerun of the active version against itself: its noise, not a candidate's verdict."""
        return self.primary.version is not None and self.primary.version == self.shadow.version


def _effects(engine: Engine, run: Run) -> list[tuple[str, str]]:
    """Side effects as data: the intents of a dry run, the files a real run wrote."""
    if run.dry_run:
        rows = []
        for intent in intents_of(engine, run.run_id):
            args = json.loads(intent.args_json)
            rows.append((intent.tool, str(args.get("path", ""))))
        return sorted(rows)
    return sorted(("write_file", a.path) for a in artifacts_of(engine, run.run_id))


def comparison_of(engine: Engine, primary_id: str, shadow_id: str) -> Comparison:
    primary, shadow = get_run(engine, primary_id), get_run(engine, shadow_id)
    if primary is None or shadow is None:
        raise LookupError(f"run {primary_id if primary is None else shadow_id} not found")
    outputs_a = {s.agent: s.output or "" for s in steps_of(engine, primary_id)}
    outputs_b = {s.agent: s.output or "" for s in steps_of(engine, shadow_id)}
    commands: list[str] = []
    for run_id in (primary_id, shadow_id):
        found = checks_of(engine, run_id, "executor")
        if isinstance(found, list):
            commands += [str(c) for c in found]
    return Comparison(
        primary, shadow,
        [(agent, outputs_a[agent], outputs_b[agent]) for agent in AGENTS
         if agent in outputs_a and agent in outputs_b],
        _effects(engine, primary), _effects(engine, shadow), list(dict.fromkeys(commands)),
    )  # fmt: skip


def effect_findings(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[Finding]:
    """Side effects compared as data. Another file name is another honest generation; writing
    nothing where the active version wrote, or using a side-effect tool it never used, is not."""
    if a and not b:
        why = f"the candidate wrote no files; the active version wrote {len(a)}"
        return [Finding("structure", "effects:none", 0.9, why)]
    new_tools = {tool for tool, _ in b} - {tool for tool, _ in a}
    if new_tools:
        return [Finding("structure", "effects:new-tool", 0.85,
                        f"the candidate uses {', '.join(sorted(new_tools))}, which the active "
                        "version never did")]  # fmt: skip
    return []


def effects_text(effects: list[tuple[str, str]]) -> str:
    return "\n".join(f"{tool} {target}" for tool, target in effects)


def family(signal: str) -> str:
    return signal.partition(":")[0]


def active_of(rows: list[DivergenceRow]) -> str | None:
    """The active version the latest of these comparisons was made against."""
    latest = max(rows, key=lambda r: r.id or 0, default=None)
    return latest.active_version if latest else None


def noise_of(engine: Engine, version: str | None, min_runs: int = 3) -> dict[str, dict[str, float]]:
    """Per agent, how often each signal family fires between two runs of `version` itself (its
    calibration reruns, the latest 50 per agent); agents with fewer than `min_runs` are absent."""
    if version is None:
        return {}
    with Session(engine) as session:
        rows = session.exec(
            select(DivergenceRow)
            .where(DivergenceRow.active_version == version,
                   DivergenceRow.candidate_version == version)
            .order_by(col(DivergenceRow.id).desc())
        ).all()  # fmt: skip
    per_agent: dict[str, list[DivergenceRow]] = {}
    for row in rows:
        if len(per_agent.setdefault(row.agent, [])) < 50:
            per_agent[row.agent].append(row)
    noise: dict[str, dict[str, float]] = {}
    for agent, mine in per_agent.items():
        if len(mine) < min_runs:
            continue
        fired: dict[str, int] = {}
        for row in mine:
            for name in {family(f["signal"]) for f in row.findings}:
                fired[name] = fired.get(name, 0) + 1
        noise[agent] = {name: n / len(mine) for name, n in sorted(fired.items())}
    return noise


def store_verdicts(
    engine: Engine, comparison: Comparison, verdicts: dict[str, tuple[Verdict, str, str]]
) -> list[DivergenceRow]:
    """Store one row per agent (and one for the side effects), replacing an earlier comparison of
    the same shadow: a retried comparison rewrites its rows."""
    primary, shadow = comparison.primary, comparison.shadow
    rows = [
        DivergenceRow(
            run_id=primary.run_id, shadow_run_id=shadow.run_id, agent=agent,
            active_version=primary.version, candidate_version=shadow.version,
            score=v.score, threshold=v.threshold, alert=v.alert, status=v.status,
            reasons_json=json.dumps(v.reasons),
            findings_json=json.dumps([f.as_dict() for f in v.findings]),
            layers=",".join(v.layers), notes_json=json.dumps(list(v.notes)),
            primary_output=a[:20_000], shadow_output=b[:20_000],
        )
        for agent, (v, a, b) in verdicts.items()
    ]  # fmt: skip
    with session_scope(engine) as session:
        for old in session.exec(
            select(DivergenceRow).where(DivergenceRow.shadow_run_id == shadow.run_id)
        ):
            session.delete(old)
        session.flush()
        session.add_all(rows)
    return rows


def offline_verdicts(
    comparison: Comparison, threshold: float, noise: dict[str, dict[str, float]] | None = None
) -> dict[str, tuple[Verdict, str, str]]:
    """Layers 1-2 on every agent's pair, and the side effects as data."""
    query = comparison.primary.query
    out: dict[str, tuple[Verdict, str, str]] = {}
    for agent, a, b in comparison.outputs:
        found = compare(agent, a, b, query=query, threshold=threshold,
                        noise=(noise or {}).get(agent))  # fmt: skip
        out[agent] = (found, a, b)
    effects = verdict(INTENTS, effect_findings(comparison.effects_a, comparison.effects_b),
                      threshold=threshold, layers=("structure",))  # fmt: skip
    out[INTENTS] = (effects, effects_text(comparison.effects_a), effects_text(comparison.effects_b))
    return out


def compare_runs(
    engine: Engine, primary_id: str, shadow_id: str, threshold: float = DEFAULT_THRESHOLD
) -> list[DivergenceRow]:
    """The offline comparison (layers 1-2, calibrated), stored. `services.shadow` adds the
    behaviour and judge layers."""
    comparison = comparison_of(engine, primary_id, shadow_id)
    noise = None if comparison.calibration else noise_of(engine, comparison.primary.version)
    return store_verdicts(engine, comparison, offline_verdicts(comparison, threshold, noise))


def divergences(
    engine: Engine,
    *,
    version: str | None = None,
    agent: str | None = None,
    run_id: str | None = None,
    shadow_run_id: str | None = None,
    alerts_only: bool = False,
    status: str | None = None,
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
        if alerts_only or status == "alert":
            stmt = stmt.where(col(DivergenceRow.alert).is_(True))
        elif status == "uncertain":
            stmt = stmt.where(DivergenceRow.status == "uncertain")
        elif status == "quiet":
            stmt = stmt.where(
                col(DivergenceRow.alert).is_(False),
                func.coalesce(DivergenceRow.status, "quiet") != "uncertain",
            )
        stmt = stmt.order_by(col(DivergenceRow.score), col(DivergenceRow.id).desc())
        return list(session.exec(stmt.offset(offset).limit(limit)))
