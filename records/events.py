"""A run's events: what a watcher of the run sees (`GET /runs/{id}/events`, `crewline run`, the
dashboard's run page), stored and numbered per run.

Each event is written by the writer of the fact it reports, in that fact's transaction — a turn's
event with its ledger row, a tool call's with its result, a status with the status — and keyed by
the fact ("turn:coder:2", "tool:coder:call_7"), so a Temporal retry or replay that writes the fact
again adds no second event. `seq` is the run's next number at insert time: a subscriber that
reconnects with `Last-Event-ID: 12` gets 13, 14, … — nothing twice, no gaps.

Events carry summaries (a tool call in one line, token counts, costs), never a tool's result or
a model's text, unless the deployment traces content (TRACE_CONTENT).
"""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, Integer, String, Text, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from crewline.db import insert_for, utcnow
from records.tables import LedgerEntry, RunEvent, from_pico

# Kinds of event (the SSE `event:` field).
RUN = "run"  # the run's status changed: {status, error?}
STEP = "step"  # an agent started or finished: {agent, status, output?, stop_reason?}
TURN = "turn"  # a model turn: {agent, turn, model, tokens, cost_usd, spent_usd, calls}
TOOL = "tool"  # a tool call finished: {agent, turn, call_id, name, call, result, ok, …}
APPROVAL = "approval"  # a call asks for a person, or was decided: {agent, call_id, state, …}
CHECKS = "checks"  # a round of acceptance checks: {agent, round, status, passed, total}
KINDS = (RUN, STEP, TURN, TOOL, APPROVAL, CHECKS)


def describe_call(name: str, args: dict[str, Any]) -> str:
    """A tool call in one line, for people: `web_search 'stripe payment intents'`."""
    shown = args.get("query") or args.get("url") or args.get("path") or args.get("command")
    if shown is None:
        return name
    return f"{name} {str(shown).replace(chr(10), ' ')[:80]!r}"


@functools.cache
def _insert(dialect: str) -> Any:
    next_seq = select(
        bindparam("p_run_id", type_=String),
        func.coalesce(func.max(RunEvent.seq), 0) + 1,
        bindparam("p_key", type_=String),
        bindparam("p_kind", type_=String),
        bindparam("p_data", type_=Text),
        bindparam("p_at", type_=DateTime),
    ).where(col(RunEvent.run_id) == bindparam("p_run_id", type_=String))
    return (
        insert_for(dialect, RunEvent)
        .from_select(["run_id", "seq", "key", "kind", "data_json", "at"], next_seq)
        .on_conflict_do_nothing(index_elements=["run_id", "key"])
    )


def emit_in(conn: Connection, run_id: str, key: str, kind: str, data: dict[str, Any]) -> None:
    """Add the event `key` of this run (once: the same key again is nothing), in the caller's
    transaction."""
    params = {
        "p_run_id": run_id, "p_key": key[:200], "p_kind": kind,
        "p_data": json.dumps(data, default=str), "p_at": utcnow(),
    }  # fmt: skip
    statement = _insert(conn.dialect.name)
    if conn.dialect.name != "postgresql":
        conn.execute(statement, params)  # SQLite: the insert holds the write lock; seq is safe
        return
    # PostgreSQL: two writers of one run (a tool call finishing as the run is cancelled) may
    # take the same number; the loser takes the next one, without undoing the caller's work.
    for _ in range(5):
        try:
            with conn.begin_nested():
                conn.execute(statement, params)
            return
        except IntegrityError:
            continue
    raise RuntimeError(f"could not number an event of run {run_id}")


def emit(engine: Engine, run_id: str, key: str, kind: str, data: dict[str, Any]) -> None:
    with engine.begin() as conn:
        emit_in(conn, run_id, key, kind, data)


_SPENT = select(func.coalesce(func.sum(LedgerEntry.cost_pusd), 0)).where(
    col(LedgerEntry.run_id) == bindparam("p_run_id"),
    col(LedgerEntry.state).is_(None) | (col(LedgerEntry.state) == "settled"),
)


def spent_in(conn: Connection, run_id: str) -> Decimal:
    """The run's settled spend, as of this transaction (a turn's event says it)."""
    return from_pico(int(conn.execute(_SPENT, {"p_run_id": run_id}).scalar_one() or 0))


_AFTER = (
    select(RunEvent)
    .where(col(RunEvent.run_id) == bindparam("p_run_id"), col(RunEvent.seq) > bindparam("p_after"))
    .order_by(col(RunEvent.seq))
    .limit(bindparam("p_limit", type_=Integer))
)


def events_after(engine: Engine, run_id: str, after: int, limit: int = 500) -> list[RunEvent]:
    """The run's events numbered above `after`, in order."""
    from sqlmodel import Session

    with Session(engine) as session:
        params = {"p_run_id": run_id, "p_after": after, "p_limit": limit}
        return list(session.exec(_AFTER, params=params).scalars())  # type: ignore[call-overload]


def latest_seqs(engine: Engine, run_ids: list[str]) -> dict[str, int]:
    """Each run's newest event number (runs without events are absent): one query per chunk."""
    found: dict[str, int] = {}
    with engine.connect() as conn:
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            rows = conn.execute(
                select(col(RunEvent.run_id), func.max(RunEvent.seq))
                .where(col(RunEvent.run_id).in_(chunk))
                .group_by(RunEvent.run_id)
            )
            found.update({run_id: int(seq) for run_id, seq in rows})
    return found
