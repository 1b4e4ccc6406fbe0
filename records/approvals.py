"""Tool calls that wait for a person: asked, decided, cancelled — on the call's row (`tool_call`:
`approval`, `approval_by`, `approval_note`, `approval_*_at`).

The run's status while it waits (WAITING_FOR_APPROVAL, then RUNNING) is written here too, by the
workflow's own activities (`activities.agents`): the workflow stays the one writer of a run's
status. Each change comes with its events (`records.events`), in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, update
from sqlmodel import Session, col, select

from crewline.db import utcnow
from records import events
from records.runs import upsert_step_in
from records.statuses import Approval, RunStatus, StepStatus
from records.tables import Run, ToolCall


def _call(run_id: str, agent: str | None, call_id: str) -> Any:
    where = (col(ToolCall.run_id) == run_id) & (col(ToolCall.call_id) == call_id)
    return where if agent is None else where & (col(ToolCall.agent) == agent)


def asked(
    engine: Engine, run_id: str, agent: str, call_id: str, *, tool: str, summary: str,
    reason: str, deadline: datetime,
) -> None:  # fmt: skip
    """The call waits for a decision; so do its step and its run."""
    with engine.begin() as conn:
        conn.execute(
            update(ToolCall)
            .where(_call(run_id, agent, call_id), col(ToolCall.approval).is_(None))
            .values(approval=Approval.PENDING.value, approval_asked_at=utcnow())
        )
        _run_status_in(conn, run_id, RunStatus.WAITING_FOR_APPROVAL)
        upsert_step_in(conn, run_id, agent, status=StepStatus.WAITING_FOR_APPROVAL.value)
        events.emit_in(
            conn, run_id, f"approval:{agent}:{call_id}:asked", events.APPROVAL,
            {"agent": agent, "call_id": call_id, "tool": tool, "call": summary,
             "reason": reason, "state": "asked", "deadline": deadline.isoformat()},
        )  # fmt: skip
        events.emit_in(
            conn, run_id, f"run:waiting:{agent}:{call_id}", events.RUN,
            {"status": RunStatus.WAITING_FOR_APPROVAL.value, "call_id": call_id},
        )  # fmt: skip


def decided(
    engine: Engine, run_id: str, agent: str, call_id: str, *, state: Approval, by: str,
    note: str | None,
) -> None:  # fmt: skip
    """The call's decision (the first one: a decided call keeps it); the run goes on."""
    with engine.begin() as conn:
        conn.execute(
            update(ToolCall)
            .where(_call(run_id, agent, call_id),
                   col(ToolCall.approval).in_([Approval.PENDING.value, None]))
            .values(approval=state.value, approval_by=by[:200],
                    approval_note=(note or "")[:1000] or None, approval_decided_at=utcnow())
        )  # fmt: skip
        _run_status_in(conn, run_id, RunStatus.RUNNING)
        upsert_step_in(conn, run_id, agent, status=StepStatus.RUNNING.value)
        events.emit_in(
            conn, run_id, f"approval:{agent}:{call_id}:decided", events.APPROVAL,
            {"agent": agent, "call_id": call_id, "state": state.value, "by": by, "note": note},
        )  # fmt: skip
        events.emit_in(
            conn, run_id, f"run:resumed:{agent}:{call_id}", events.RUN,
            {"status": RunStatus.RUNNING.value},
        )  # fmt: skip


def would_ask(engine: Engine, run_id: str, agent: str, call_id: str) -> None:
    """A shadow run's call that would have waited for a person: never asked, never run."""
    with engine.begin() as conn:
        conn.execute(
            update(ToolCall)
            .where(_call(run_id, agent, call_id), col(ToolCall.approval).is_(None))
            .values(approval=Approval.WOULD_ASK.value, approval_by="shadow run",
                    approval_note="a shadow run asks nobody and does nothing")
        )  # fmt: skip


def cancel_pending_in(conn: Connection, run_id: str) -> None:
    """A cancelled run's waiting calls are cancelled with it."""
    rows = conn.execute(
        select(ToolCall.agent, ToolCall.call_id).where(
            col(ToolCall.run_id) == run_id, col(ToolCall.approval) == Approval.PENDING.value
        )
    ).all()
    if not rows:
        return
    conn.execute(
        update(ToolCall)
        .where(col(ToolCall.run_id) == run_id, col(ToolCall.approval) == Approval.PENDING.value)
        .values(approval=Approval.CANCELLED.value, approval_decided_at=utcnow(),
                approval_note="the run was cancelled")
    )  # fmt: skip
    for agent, call_id in rows:
        events.emit_in(
            conn, run_id, f"approval:{agent}:{call_id}:decided", events.APPROVAL,
            {"agent": agent, "call_id": call_id, "state": Approval.CANCELLED.value,
             "note": "the run was cancelled"},
        )  # fmt: skip


def _run_status_in(conn: Connection, run_id: str, status: RunStatus) -> None:
    from records.statuses import OPEN

    conn.execute(
        update(Run)
        .where(col(Run.run_id) == run_id, col(Run.status).in_([s.value for s in OPEN]))
        .values(status=status.value, updated_at=utcnow())
    )


def stated_reason(engine: Engine, run_id: str, agent: str, call_id: str) -> str:
    """What the model said in the turn that asked for this call (its reason, if it gave one)."""
    import json

    from records.tables import Turn

    with Session(engine) as session:
        turn = session.exec(
            select(Turn.message_json)
            .join(
                ToolCall,
                (col(ToolCall.run_id) == col(Turn.run_id))
                & (col(ToolCall.agent) == col(Turn.agent))
                & (col(ToolCall.turn) == col(Turn.turn)),
            )
            .where(_call(run_id, agent, call_id))
        ).first()
    text = str(json.loads(turn or "{}").get("content") or "").strip() if turn else ""
    return text[:1000]


def calls_waiting(engine: Engine, run_id: str | None = None) -> list[ToolCall]:
    """Calls waiting for a decision (of one run, or of all)."""
    with Session(engine) as session:
        stmt = select(ToolCall).where(ToolCall.approval == Approval.PENDING.value)
        if run_id is not None:
            stmt = stmt.where(ToolCall.run_id == run_id)
        return list(session.exec(stmt.order_by(col(ToolCall.id))))


def call_of(engine: Engine, run_id: str, call_id: str) -> ToolCall | None:
    with Session(engine) as session:
        return session.exec(select(ToolCall).where(_call(run_id, None, call_id))).first()
