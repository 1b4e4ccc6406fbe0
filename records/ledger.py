"""The cost ledger: one row per LLM call attempt that may have reached the provider; totals.

Writes happen in activities (I/O). The key (workflow id, activity id, attempt) makes a retried or
replayed write a no-op, so a crash between "provider answered" and "activity completed" can never
charge a call twice.

An attempt's row exists before its request leaves the process: `reserve` writes it `pending`,
holding the reservation's worst case (prompt estimate + the `max_tokens` sent). `settle` replaces
it with the reported usage; `release` deletes it only when the call provably never reached the
provider (refused, or answered with an error it does not bill). A worker killed mid-call leaves
its row pending: the next attempt of the step, or the run's end, settles it as `estimated`
(`cut_off_by="worker_lost"`) at that worst case — so recorded spend is never below what the
provider billed, and the next attempt's budget already counts it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, Engine, String, bindparam, case, cast, delete, func, update
from sqlmodel import Session, col, select

from crewline.db import insert_for, session_scope, utcnow
from records.tables import LedgerEntry, Run, from_pico

GroupBy = Literal["agent", "model", "day", "run", "version", "key"]


PENDING, SETTLED = "pending", "settled"
# Rows that are spend (not a reservation in flight); rows from before `state` are settled.
_SETTLED = func.coalesce(LedgerEntry.state, SETTLED) != PENDING
_ESTIMATED = col(LedgerEntry.usage_source) == "estimated"
# Runs in the ledger write's transaction (e.g. the step row's update): one commit for both.
Then = Callable[[Connection], None] | None
# What settling changes in a reserved row (the rest — run, attempt, agent… — is the same).
_SETTLES = (
    "model", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_pusd",
    "input_per_mtok", "output_per_mtok", "price_source", "usage_source", "state", "cut_off_by",
)  # fmt: skip
_COLUMNS = tuple(c.name for c in LedgerEntry.__table__.columns if c.name != "id")  # type: ignore[attr-defined]


@dataclass
class Charge:
    """One attempt's ledger row as the hot path writes it: a plain object (an ORM instance
    costs more to build than the write itself). Field names are the ledger's columns."""

    run_id: str
    workflow_id: str
    activity_id: str
    attempt: int
    agent: str
    provider: str
    model: str
    version: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_pusd: int
    input_per_mtok: str | None
    output_per_mtok: str | None
    price_source: str
    usage_source: str
    shadow: bool = False
    state: str | None = None
    cut_off_by: str | None = None
    key_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    @property
    def cost_usd(self) -> Decimal:
        return from_pico(self.cost_pusd)


Row = Charge | LedgerEntry


def _params(entry: Row) -> dict[str, Any]:
    return {f"p_{name}": getattr(entry, name) for name in _COLUMNS}


@functools.cache
def _insert_statement(dialect: str) -> Any:
    """INSERT … ON CONFLICT (attempt) DO NOTHING RETURNING id, with the key that started the
    run copied in by a subquery when the row names none. Built once: executed with parameters,
    SQLAlchemy compiles it once too."""
    values: dict[str, Any] = {name: bindparam(f"p_{name}") for name in _COLUMNS}
    started_by = select(Run.key_id).where(Run.run_id == bindparam("p_run_id")).scalar_subquery()
    values["key_id"] = func.coalesce(bindparam("p_key_id"), started_by)
    return (
        insert_for(dialect, LedgerEntry)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["workflow_id", "activity_id", "attempt"])
        .returning(LedgerEntry.id)
    )


_ATTEMPT = (
    (col(LedgerEntry.workflow_id) == bindparam("p_workflow_id"))
    & (col(LedgerEntry.activity_id) == bindparam("p_activity_id"))
    & (col(LedgerEntry.attempt) == bindparam("p_attempt"))
)
_SETTLE = update(LedgerEntry).where(_ATTEMPT).values({k: bindparam(f"p_{k}") for k in _SETTLES})
_RELEASE = delete(LedgerEntry).where(_ATTEMPT, col(LedgerEntry.state) == PENDING)


def _insert(conn: Connection, entry: Row) -> bool:
    """Write the attempt's row; False if this attempt was already recorded."""
    statement = _insert_statement(conn.dialect.name)
    return conn.execute(statement, _params(entry)).first() is not None


def record_call(engine: Engine, entry: Row, *, then: Then = None) -> bool:
    """Insert the row; False if this attempt was already recorded (a retried write).

    `then` runs in the same transaction (e.g. the step row's settled cost and status), so the
    ledger and what it is attributed to commit together or not at all — and in one write.
    """
    # A Core transaction, not an ORM session: this is on every LLM call's path.
    with engine.begin() as conn:
        recorded = _insert(conn, entry)
        if then is not None:
            then(conn)
    return recorded


def reserve(engine: Engine, entry: Row, *, then: Then = None) -> None:
    """The attempt's pending row (its worst case), durable before the request is sent."""
    entry.state = PENDING
    record_call(engine, entry, then=then)


def settle(engine: Engine, entry: Row, *, then: Then = None) -> None:
    """The attempt's final row, replacing its pending one (or written fresh)."""
    entry.state = SETTLED
    with engine.begin() as conn:
        # One UPDATE by the attempt's key (no read first): this is on every call's path.
        if conn.execute(_SETTLE, _params(entry)).rowcount == 0:
            _insert(conn, entry)
        if then is not None:
            then(conn)


def release(engine: Engine, entry: Row, *, then: Then = None) -> None:
    """Drop the attempt's pending row: the request provably never cost anything."""
    with engine.begin() as conn:
        conn.execute(_RELEASE, _params(entry))
        if then is not None:
            then(conn)


def settle_lost(engine: Engine, *, run_id: str) -> list[LedgerEntry]:
    """Settle a run's pending rows as cut off by a lost worker (at their worst case): what a run
    that ended leaves behind. Returns them."""
    with session_scope(engine) as session:
        return _settle_lost(session, LedgerEntry.run_id == run_id)


def _settle_lost(session: Session, *where: Any) -> list[LedgerEntry]:
    rows = session.exec(select(LedgerEntry).where(LedgerEntry.state == PENDING, *where)).all()
    for row in rows:
        row.state, row.cut_off_by, row.usage_source = SETTLED, "worker_lost", "estimated"
        session.add(row)
    return list(rows)


def cost_of_activity(
    engine: Engine, workflow_id: str, activity_id: str
) -> tuple[Decimal, list[LedgerEntry]]:
    """Everything the earlier attempts of one activity cost, for a new attempt's budget, and the
    attempts settled just now as lost. An attempt still pending is dead (Temporal starts the next
    one only after giving up on it): it is settled here as `worker_lost`, at its worst case, in
    the same transaction."""
    same = (LedgerEntry.workflow_id == workflow_id, LedgerEntry.activity_id == activity_id)
    with session_scope(engine) as session:
        lost = _settle_lost(session, *same)
        stmt = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(*same)
        return from_pico(int(session.exec(stmt).one())), lost


def daily(
    engine: Engine, by: GroupBy, *, since: datetime, key_id: str | None = None
) -> list[tuple[str, str, Decimal]]:
    """Settled spend per UTC day and group since `since`: (day, group, USD), days ascending."""
    key: Any = {
        "agent": LedgerEntry.agent,
        "model": LedgerEntry.model,
        "version": func.coalesce(LedgerEntry.version, "unversioned"),
        "key": func.coalesce(LedgerEntry.key_id, "none"),
    }[by]
    day = func.substr(cast(col(LedgerEntry.created_at), String), 1, 10)
    filters: list[Any] = [_SETTLED, col(LedgerEntry.created_at) >= since]
    if key_id is not None:
        filters.append(col(LedgerEntry.key_id) == key_id)
    with Session(engine) as session:
        stmt = (
            select(day, key, func.sum(LedgerEntry.cost_pusd))  # type: ignore[call-overload]
            .where(*filters)
            .group_by(day, key)
            .order_by(day)
        )
        return [(str(d), str(k), from_pico(int(c or 0))) for d, k, c in session.exec(stmt)]


def spent_by_run(engine: Engine, run_ids: list[str]) -> dict[str, Decimal]:
    """What each run has spent (settled rows), in one query for a page of runs."""
    if not run_ids:
        return {}
    with Session(engine) as session:
        stmt = (
            select(LedgerEntry.run_id, func.sum(LedgerEntry.cost_pusd))
            .where(col(LedgerEntry.run_id).in_(run_ids), _SETTLED)
            .group_by(LedgerEntry.run_id)
        )
        return {run_id: from_pico(int(total or 0)) for run_id, total in session.exec(stmt)}


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
    shadow: bool | None = None,
) -> tuple[list[dict[str, Any]], Decimal, int]:
    """Totals per group, biggest spend first; plus the grand total and the number of groups.
    `shadow`: only shadow (True) or only primary (False) spend; None: both."""
    key: Any = {
        "agent": LedgerEntry.agent,
        "model": LedgerEntry.model,
        "run": LedgerEntry.run_id,
        "version": func.coalesce(LedgerEntry.version, "unversioned"),
        "day": func.substr(cast(col(LedgerEntry.created_at), String), 1, 10),
        "key": func.coalesce(LedgerEntry.key_id, "none"),
    }[group_by]
    filters: list[Any] = [_SETTLED]
    if key_id is not None:
        filters.append(col(LedgerEntry.key_id) == key_id)
    if shadow is not None:
        filters.append(col(LedgerEntry.shadow).is_(shadow))
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
            func.sum(case((_ESTIMATED, LedgerEntry.cost_pusd), else_=0)).label("estimated"),
            func.sum(case((_ESTIMATED, 1), else_=0)).label("cut"),
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
            "estimated_calls": int(r.cut or 0),
            "estimated_usd": from_pico(int(r.estimated or 0)),
        }
        for r in rows
    ]
    return items, from_pico(int(total[0] if isinstance(total, tuple) else total)), int(groups)
