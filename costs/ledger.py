"""The cost ledger: write one row per accepted LLM call attempt, exactly once; read totals.

Writes happen in activities (I/O). The key (workflow id, activity id, attempt) makes a retried or
replayed write a no-op, so a crash between "provider answered" and "activity completed" can never
charge a call twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Engine, String, cast, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from crewline.db import LedgerEntry, Run, from_pico, session_scope

GroupBy = Literal["agent", "model", "day", "run", "version", "key"]


def record_call(
    engine: Engine, entry: LedgerEntry, *, then: Callable[[Session], None] | None = None
) -> bool:
    """Insert the row; False if this attempt was already recorded (a retried write).

    `then` runs in the same transaction (e.g. the step row's settled cost and status), so the
    ledger and what it is attributed to commit together or not at all — and in one write.
    """
    with session_scope(engine) as session:
        if entry.key_id is None:  # attributed to the key that started the run
            started_by = select(Run.key_id).where(Run.run_id == entry.run_id)
            entry.key_id = session.exec(started_by).first()
        try:
            with session.begin_nested():
                session.add(entry)
            recorded = True
        except IntegrityError:
            recorded = False
        if then is not None:
            then(session)
    return recorded


def cost_of_activity(engine: Engine, workflow_id: str, activity_id: str) -> Decimal:
    """Everything the attempts of one activity cost so far (settled spend of a step)."""
    with Session(engine) as session:
        stmt = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(
            LedgerEntry.workflow_id == workflow_id, LedgerEntry.activity_id == activity_id
        )
        return from_pico(int(session.exec(stmt).one()))


def calls_of(engine: Engine, run_id: str) -> list[LedgerEntry]:
    with Session(engine) as session:
        stmt = select(LedgerEntry).where(LedgerEntry.run_id == run_id).order_by(col(LedgerEntry.id))
        return list(session.exec(stmt))


def grouped(
    engine: Engine,
    group_by: GroupBy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    key_id: str | None = None,
) -> tuple[list[dict[str, Any]], Decimal, int]:
    """Totals per group, biggest spend first; plus the grand total and the number of groups."""
    key: Any = {
        "agent": LedgerEntry.agent,
        "model": LedgerEntry.model,
        "run": LedgerEntry.run_id,
        "version": func.coalesce(LedgerEntry.version, "unversioned"),
        "day": func.substr(cast(col(LedgerEntry.created_at), String), 1, 10),
        "key": func.coalesce(LedgerEntry.key_id, "none"),
    }[group_by]
    filters = []
    if key_id is not None:
        filters.append(col(LedgerEntry.key_id) == key_id)
    if since is not None:
        filters.append(col(LedgerEntry.created_at) >= since)
    if until is not None:
        filters.append(col(LedgerEntry.created_at) < until)
    cost = func.sum(LedgerEntry.cost_pusd)
    with Session(engine) as session:
        base = select(  # type: ignore[call-overload]
            key.label("key"),
            func.count().label("calls"),
            func.sum(LedgerEntry.prompt_tokens).label("prompt_tokens"),
            func.sum(LedgerEntry.completion_tokens).label("completion_tokens"),
            cost.label("cost"),
        ).where(*filters)
        rows = session.exec(  # type: ignore[call-overload]
            base.group_by(key).order_by(cost.desc(), key).offset(offset).limit(limit)
        ).all()
        total = session.exec(  # type: ignore[call-overload]
            select(func.coalesce(cost, 0)).where(*filters)
        ).one()
        groups = session.exec(  # type: ignore[call-overload]
            select(func.count(func.distinct(key))).where(*filters)
        ).one()
    items = [
        {
            "key": str(r.key),
            "calls": int(r.calls),
            "prompt_tokens": int(r.prompt_tokens or 0),
            "completion_tokens": int(r.completion_tokens or 0),
            "total_usd": from_pico(int(r.cost or 0)),
        }
        for r in rows
    ]
    return items, from_pico(int(total[0] if isinstance(total, tuple) else total)), int(groups)
