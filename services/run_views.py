"""How a run reads — its page, a list of runs, its costs, artifacts and intents — for the API, the
dashboard and the CLI alike (`services.runs.Runs` serves them, with its access checks; nothing
here writes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from crewline.settings import Settings
from records import ledger
from records import runs as records
from records.events import describe_call
from records.statuses import RunStatus
from records.tables import Intent, Run
from services.access import Principal
from services.approvals import approvals_of
from services.models import (
    ApprovalView,
    ArtifactOut,
    CallOut,
    ChecksSummary,
    DivergenceOut,
    IntentOut,
    RunCosts,
    RunLinks,
    RunOut,
    RunPage,
    ShadowOut,
    StepOut,
    ToolCallView,
    TurnView,
)
from versioning import shadow


def url_path(path: str) -> str:
    """A file path as a URL path: each segment percent-encoded (`a?b#c.txt`, `%2e%2e`), the
    slashes kept."""
    return "/".join(quote(segment, safe="") for segment in path.split("/"))


def links(settings: Settings, run_id: str, trace_id: str | None = None) -> RunLinks:
    ui = f"http://127.0.0.1:{settings.temporal_ui_port}"
    trace = None
    if trace_id and settings.jaeger_ui_url:
        trace = f"{settings.jaeger_ui_url.rstrip('/')}/trace/{trace_id}"
    return RunLinks(
        self=f"/runs/{run_id}",
        artifacts=f"/runs/{run_id}/artifacts",
        cancel=f"/runs/{run_id}/cancel",
        costs=f"/runs/{run_id}/costs",
        temporal_ui=f"{ui}/namespaces/{settings.temporal_namespace}/workflows/{run_id}",
        trace=trace,
    )


def summary(settings: Settings, run: Run, spent: Decimal | None = None) -> RunOut:
    return RunOut.model_validate(
        {**run.model_dump(), "links": links(settings, run.run_id, run.trace_id), "spent_usd": spent}
    )


def artifacts_out(engine: Engine, run_id: str) -> list[ArtifactOut]:
    return [
        ArtifactOut(
            path=a.path, size_bytes=a.size_bytes, sha256=a.sha256,
            url=f"/runs/{run_id}/artifacts/{url_path(a.path)}",
        )
        for a in records.artifacts_of(engine, run_id)
    ]  # fmt: skip


def intent_out(run_id: str, intent: Intent) -> IntentOut:
    assert intent.id is not None
    return IntentOut(
        id=intent.id, agent=intent.agent, tool=intent.tool, summary=intent.summary,
        url=f"/runs/{run_id}/intents/{intent.id}",
    )  # fmt: skip


def _describe(name: str, args_json: str) -> str:
    try:
        args = json.loads(args_json)
    except ValueError:
        args = {}
    return describe_call(name, args if isinstance(args, dict) else {})


def _steps(engine: Engine, run_id: str) -> tuple[list[StepOut], list[ApprovalView]]:
    """The run's steps, each with its turns and their tool calls; and the calls that needed a
    person's approval."""
    turns, calls = records.turns_of(engine, run_id)
    asked = {a.call_id: a for a in approvals_of(engine, calls)}
    by_turn: dict[tuple[str, int], list[ToolCallView]] = {}
    for c in calls:
        by_turn.setdefault((c.agent, c.turn), []).append(
            ToolCallView(
                call_id=c.call_id, name=c.name, summary=_describe(c.name, c.args_json),
                status=c.status, ok=c.ok, result=c.summary,
                result_chars=len(c.result) if c.result is not None else None,
                duration_ms=c.duration_ms, intent=c.intent, approval=asked.get(c.call_id),
            )
        )  # fmt: skip
    views: dict[str, list[TurnView]] = {}
    for t in turns:
        views.setdefault(t.agent, []).append(
            TurnView(
                turn=t.turn, status=t.status, model=t.model, prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens, cost_usd=t.cost_usd, attempt=t.attempt,
                finish_reason=t.finish_reason, tool_calls=by_turn.get((t.agent, t.turn), []),
            )
        )  # fmt: skip
    out = []
    for step in records.steps_of(engine, run_id):
        view = StepOut.model_validate(step, from_attributes=True)
        view.turns = views.get(step.agent, [])
        view.checks = json.loads(step.checks_json) if step.checks_json else None
        out.append(view)
    return out, list(asked.values())


def _checks_summary(record: Any) -> ChecksSummary | None:
    if not isinstance(record, dict) or "status" not in record:
        return None
    rounds = record.get("rounds") or []
    last = rounds[-1]["results"] if rounds else []
    return ChecksSummary(
        status=record["status"], passed=sum(1 for r in last if r.get("passed")),
        total=len(last), rounds=len(rounds), why=record.get("why"),
    )  # fmt: skip


def run_detail(engine: Engine, settings: Settings, run: Run) -> RunOut:
    """A run with its steps, artifacts, intents, spend and shadow verdicts."""
    spent = ledger.spent_by_run(engine, [run.run_id]).get(run.run_id, Decimal(0))
    out = summary(settings, run, spent)
    out.steps, out.approvals = _steps(engine, run.run_id)
    out.checks = _checks_summary(next((s.checks for s in out.steps if s.agent == "coder"), None))
    out.artifacts = artifacts_out(engine, run.run_id)
    out.intents = [intent_out(run.run_id, i) for i in records.intents_of(engine, run.run_id)]
    shadow_run = shadow.shadow_run_of(engine, run.run_id)
    if shadow_run is not None:
        out.shadow = ShadowOut(
            run_id=shadow_run.run_id,
            status=RunStatus(shadow_run.status),
            version=shadow_run.version,
            divergences=[
                DivergenceOut.of(d) for d in shadow.divergences(engine, run_id=run.run_id)
            ],
        )
    return out


@dataclass(frozen=True)
class RunQuery:
    """Which runs to list (newest first)."""

    status: RunStatus | None = None
    started_by: str | None = None
    version: str | None = None
    text: str | None = None
    shadows: bool = False
    limit: int = 20
    offset: int = 0


def list_runs(engine: Engine, settings: Settings, principal: Principal, q: RunQuery) -> RunPage:
    filters: list[Any] = []
    if not q.shadows:
        filters.append(col(Run.shadow_of).is_(None))
    if q.status is not None:
        filters.append(Run.status == q.status.value)
    if q.version:
        filters.append(Run.version == q.version)
    if q.text:
        filters.append(col(Run.query).contains(q.text, autoescape=True))
    for only in {principal.runs_of, q.started_by} - {None}:
        filters.append(Run.key_id == only)
    with Session(engine) as session:
        total = session.exec(select(func.count()).select_from(Run).where(*filters)).one()
        rows = session.exec(
            select(Run)
            .where(*filters)
            .order_by(col(Run.created_at).desc())
            .offset(q.offset)
            .limit(q.limit)
        ).all()
    spent = ledger.spent_by_run(engine, [r.run_id for r in rows])
    items = [summary(settings, r, spent.get(r.run_id, Decimal(0))) for r in rows]
    return RunPage(items=items, total=int(total), limit=q.limit, offset=q.offset)


def costs_of(engine: Engine, run: Run) -> RunCosts:
    calls = ledger.calls_of(engine, run.run_id)
    by_agent: dict[str, Decimal] = {}
    reserved = Decimal(0)
    for call in calls:
        if call.state == ledger.PENDING:  # in flight: its worst case is held, not yet spent
            reserved += call.cost_usd
            continue
        by_agent[call.agent] = by_agent.get(call.agent, Decimal(0)) + call.cost_usd
    return RunCosts(
        run_id=run.run_id,
        budget_usd=run.budget_usd,
        total_usd=sum(by_agent.values(), Decimal(0)),
        reserved_usd=reserved,
        by_agent=by_agent,
        calls=[
            CallOut.model_validate(
                {**c.model_dump(), "cost_usd": c.cost_usd, "state": c.state or "settled"}
            )
            for c in calls
        ],
    )
