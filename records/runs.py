"""Writes and reads of runs, steps, artifacts, intents and breaker states (the records interface).

The runtime writes from activities (never from workflow code: it is I/O); the services read. Each
write is an upsert on a natural key, so an activity that Temporal retries — or replays after a
worker crash — updates its row rather than adding a duplicate.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session, SQLModel, col, select

from crewline.db import insert_for, session_scope, utcnow
from records import events
from records.tables import Artifact, BreakerRow, Intent, Run, Step, ToolCall, Turn

M = TypeVar("M", bound=SQLModel)


def upsert_step(engine: Engine, run_id: str, agent: str, **fields: Any) -> None:
    for _ in range(2):  # a concurrent insert of the same key loses the race once, then updates
        try:
            with engine.begin() as conn:  # Core: on a step's path
                upsert_step_in(conn, run_id, agent, **fields)
            return
        except IntegrityError:
            continue
    raise RuntimeError(f"could not upsert step {run_id}/{agent}")


def upsert_step_in(session: Session | Connection, run_id: str, agent: str, **fields: Any) -> None:
    """The step upsert inside a caller's transaction (e.g. together with its ledger row): one
    INSERT … ON CONFLICT (run, agent) DO UPDATE, on the agent's hot path. The statement for a
    set of fields is built once and then executed with parameters."""
    dialect = (session.get_bind() if isinstance(session, Session) else session).dialect.name
    statement = _step_upsert(dialect, tuple(sorted(fields)))
    params = {f"p_{k}": v for k, v in fields.items()}
    session.execute(statement, {"p_run_id": run_id, "p_agent": agent, **params})


@functools.lru_cache(maxsize=64)
def _step_upsert(dialect: str, names: tuple[str, ...]) -> Any:
    insert = insert_for(dialect, Step)
    values: dict[str, Any] = {"run_id": bindparam("p_run_id"), "agent": bindparam("p_agent")}
    stmt = insert.values(**values, **{n: bindparam(f"p_{n}") for n in names})
    if not names:
        return stmt.on_conflict_do_nothing(index_elements=["run_id", "agent"])
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "agent"], set_={n: insert.excluded[n] for n in names}
    )


@functools.cache
def _run_started(dialect: str) -> Any:
    insert = insert_for(dialect, Run)
    return insert.values(
        run_id=bindparam("p_run_id"), query=bindparam("p_query"), status="RUNNING",
        provider=bindparam("p_provider"), version=bindparam("p_version"),
        created_at=bindparam("p_now"), updated_at=bindparam("p_now"),
    ).on_conflict_do_update(
        index_elements=["run_id"],
        set_={"status": "RUNNING", "provider": insert.excluded.provider,
              "version": insert.excluded.version, "updated_at": insert.excluded.updated_at},
        where=col(Run.status).in_(("QUEUED", "RUNNING")),  # never un-end a run
    )  # fmt: skip


_RUN_COMPLETED = (
    update(Run)
    .where(col(Run.run_id) == bindparam("p_run_id"))
    .values(status="COMPLETED", final_answer=bindparam("p_answer"), updated_at=bindparam("p_now"))
)


def run_started_in(
    conn: Connection, *, run_id: str, query: str, provider: str, version: str | None
) -> None:
    """The run is RUNNING on this provider and version (written with its first step's
    reservation; a run started outside the API gets its row here)."""
    conn.execute(
        _run_started(conn.dialect.name),
        {"p_run_id": run_id, "p_query": query, "p_provider": provider, "p_version": version,
         "p_now": utcnow()},
    )  # fmt: skip
    events.emit_in(conn, run_id, "run:started", events.RUN, {"status": "RUNNING"})


def run_completed_in(conn: Connection, *, run_id: str, final_answer: str) -> None:
    """The run is COMPLETED with this answer (written with its last step's ledger row)."""
    conn.execute(_RUN_COMPLETED, {"p_run_id": run_id, "p_answer": final_answer, "p_now": utcnow()})
    events.emit_in(conn, run_id, "run:ended", events.RUN, {"status": "COMPLETED"})


_OUTPUTS = select(col(Step.agent), col(Step.output)).where(
    col(Step.run_id) == bindparam("p_run_id"), col(Step.status) == "COMPLETED"
)
_ARTIFACTS = select(col(Artifact.path)).where(col(Artifact.run_id) == bindparam("p_run_id"))
_CHECKS = select(col(Step.agent), col(Step.checks_json)).where(
    col(Step.run_id) == bindparam("p_run_id"),
    col(Step.agent).in_(bindparam("p_agents", expanding=True)),
)


def _context_in(conn: Connection, run_id: str, artifacts: bool) -> dict[str, str]:
    found = {agent: output or "" for agent, output in conn.execute(_OUTPUTS, {"p_run_id": run_id})}
    if artifacts and "coder" in found:
        paths = sorted(p for (p,) in conn.execute(_ARTIFACTS, {"p_run_id": run_id}))
        found["artifacts"] = "\n".join(f"- {p}" for p in paths) or "(none)"
    return found


def _checks_in(conn: Connection, run_id: str, agents: tuple[str, ...]) -> dict[str, Any]:
    """Those steps' checks (JSON) by agent; a step without any is absent."""
    rows = conn.execute(_CHECKS, {"p_run_id": run_id, "p_agents": list(agents)})
    return {agent: json.loads(found) for agent, found in rows if found}


def update_run(engine: Engine, run_id: str, *, event_key: str | None = None, **fields: Any) -> None:
    """The workflow's write of its run's row; `event_key`: the status change's event (its key:
    written again, it is still one event)."""
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            # A run started directly through Temporal (temporal CLI, tests) has no API row yet.
            run = Run(run_id=run_id, query=str(fields.pop("query", "")))
        else:
            fields.pop("query", None)
        for key, value in fields.items():
            setattr(run, key, value)
        run.updated_at = utcnow()
        session.add(run)
        if event_key is not None:
            data = {"status": run.status}
            for name in ("error", "budget_usd"):
                if fields.get(name) is not None:
                    data[name] = str(fields[name])
            events.emit_in(session.connection(), run_id, event_key, events.RUN, data)


def note_cancelled(engine: Engine, run_id: str, agent: str | None) -> None:
    """Say where a cancelled run stopped, after who cancelled it; its calls waiting for a
    decision are cancelled with it."""
    from records.approvals import cancel_pending_in

    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return
        where = f" at step {agent}" if agent else " between steps"
        reason = run.error or "cancelled"
        if where not in reason:
            run.error = reason + where
        session.add(run)
        cancel_pending_in(session.connection(), run_id)


@functools.cache
def _artifact_upsert(dialect: str) -> Any:
    insert = insert_for(dialect, Artifact)
    return insert.values(
        run_id=bindparam("p_run_id"), path=bindparam("p_path"), size_bytes=bindparam("p_size"),
        sha256=bindparam("p_sha256"), created_at=bindparam("p_now"),
    ).on_conflict_do_update(
        index_elements=["run_id", "path"],
        set_={"size_bytes": insert.excluded.size_bytes, "sha256": insert.excluded.sha256,
              "created_at": insert.excluded.created_at},
    )  # fmt: skip


def record_artifact(engine: Engine, run_id: str, path: str, size_bytes: int, sha256: str) -> None:
    """The file's row (a retried step that writes the same path again updates it)."""
    with engine.begin() as conn:
        conn.execute(
            _artifact_upsert(conn.dialect.name),
            {"p_run_id": run_id, "p_path": path, "p_size": size_bytes, "p_sha256": sha256,
             "p_now": utcnow()},
        )  # fmt: skip


def record_intent(
    engine: Engine,
    run_id: str,
    agent: str,
    seq: int,
    tool: str,
    summary: str,
    args: dict[str, Any],
) -> None:
    """Store what a side-effect tool would have done (a retried step overwrites its own)."""
    with session_scope(engine) as session:
        stmt = select(Intent).where(
            Intent.run_id == run_id, Intent.agent == agent, Intent.seq == seq
        )
        row = session.exec(stmt).first() or Intent(
            run_id=run_id, agent=agent, seq=seq, tool=tool, summary="", args_json="{}"
        )
        row.tool, row.summary = tool, summary[:500]
        row.args_json = json.dumps(args, default=str)
        session.add(row)


def save_breaker(engine: Engine, worker: str, snap: Any) -> None:
    """`snap`: a breaker's snapshot (provider, model, state, consecutive_failures,
    times_opened, opened_at, updated_at)."""
    with session_scope(engine) as session:
        stmt = select(BreakerRow).where(
            BreakerRow.worker == worker,
            BreakerRow.provider == snap.provider,
            BreakerRow.model == snap.model,
        )
        row = session.exec(stmt).first() or BreakerRow(
            worker=worker, provider=snap.provider, model=snap.model, state=snap.state
        )
        row.state = snap.state.value
        row.consecutive_failures = snap.consecutive_failures
        row.times_opened = snap.times_opened
        row.opened_at = snap.opened_at
        row.updated_at = snap.updated_at
        session.add(row)


def get_run(engine: Engine, run_id: str) -> Run | None:
    with Session(engine) as session:
        return session.get(Run, run_id)


def steps_of(engine: Engine, run_id: str) -> list[Step]:
    with Session(engine) as session:
        stmt = select(Step).where(Step.run_id == run_id).order_by(Step.position)  # type: ignore[arg-type]
        return list(session.exec(stmt))


def breakers(engine: Engine) -> list[BreakerRow]:
    with Session(engine) as session:
        stmt = select(BreakerRow).order_by(col(BreakerRow.updated_at).desc())
        return list(session.exec(stmt))


def intents_of(engine: Engine, run_id: str) -> list[Intent]:
    with Session(engine) as session:
        stmt = select(Intent).where(Intent.run_id == run_id).order_by(col(Intent.id))
        return list(session.exec(stmt))


def artifacts_of(engine: Engine, run_id: str) -> list[Artifact]:
    with Session(engine) as session:
        stmt = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.path)  # type: ignore[arg-type]
        return list(session.exec(stmt))


def close_run(
    engine: Engine,
    run_id: str,
    *,
    status: str,
    error: str | None = None,
    final_answer: str | None = None,
) -> bool:
    """End a run row that still says it is going, from its workflow's record in Temporal (the
    reconciler). False if the row had already ended (the workflow wrote it meanwhile)."""
    from records.statuses import OPEN

    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if error is not None:
        values["error"] = error
    if final_answer is not None:
        values["final_answer"] = final_answer
    with engine.begin() as conn:
        done = conn.execute(
            update(Run)
            .where(col(Run.run_id) == run_id, col(Run.status).in_([s.value for s in OPEN]))
            .values(**values)
        )
        if done.rowcount:
            data = {"status": status} | ({"error": error} if error else {})
            events.emit_in(conn, run_id, "run:ended", events.RUN, data)
    return bool(done.rowcount)


def set_trace_id(engine: Engine, run_id: str, trace_id: str) -> None:
    """The run's trace (a shadow's is its own, made when its start is)."""
    with engine.begin() as conn:
        conn.execute(update(Run).where(col(Run.run_id) == run_id).values(trace_id=trace_id))


# ---- turns and tool calls: an agent's loop ------------------------------------------------------
@dataclass(frozen=True)
class PlannedCall:
    """A tool call a turn asked for (or one the runtime made from the answer, e.g. a file block
    in the old text format): recorded PENDING with the turn."""

    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class TurnRecord:
    run_id: str
    agent: str
    turn: int
    message: dict[str, Any]  # {"content", "tool_calls"}
    finish_reason: str | None
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal
    attempt: int
    calls: tuple[PlannedCall, ...] = ()
    feedback: str | None = None
    # Its event carries the model's text (TRACE_CONTENT); otherwise counts and summaries only.
    text_in_event: bool = False


@functools.cache
def _turn_upsert(dialect: str) -> Any:
    insert = insert_for(dialect, Turn)
    names = ("status", "message_json", "finish_reason", "model", "prompt_tokens",
             "completion_tokens", "cost_usd", "attempt", "error", "feedback",
             "finished_at")  # fmt: skip
    stmt = insert.values(
        run_id=bindparam("p_run_id"), agent=bindparam("p_agent"), turn=bindparam("p_turn"),
        started_at=bindparam("p_finished_at"), **{n: bindparam(f"p_{n}") for n in names},
    )  # fmt: skip
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "agent", "turn"], set_={n: insert.excluded[n] for n in names}
    )


@functools.cache
def _call_insert(dialect: str) -> Any:
    names = ("run_id", "agent", "turn", "seq", "call_id", "name", "args_json", "status")
    return (
        insert_for(dialect, ToolCall)
        .values(**{n: bindparam(f"p_{n}") for n in names})
        .on_conflict_do_nothing(index_elements=["run_id", "agent", "call_id"])
    )


def turn_settled_in(conn: Connection, record: TurnRecord) -> None:
    """The turn is COMPLETED with the model's message, and its tool calls are recorded PENDING —
    in the transaction of the call's ledger row."""
    conn.execute(
        _turn_upsert(conn.dialect.name),
        {
            "p_run_id": record.run_id, "p_agent": record.agent, "p_turn": record.turn,
            "p_status": "COMPLETED", "p_message_json": json.dumps(record.message),
            "p_finish_reason": record.finish_reason, "p_model": record.model,
            "p_prompt_tokens": record.prompt_tokens,
            "p_completion_tokens": record.completion_tokens, "p_cost_usd": record.cost_usd,
            "p_attempt": record.attempt, "p_error": None, "p_feedback": record.feedback,
            "p_finished_at": utcnow(),
        },
    )  # fmt: skip
    for seq, call in enumerate(record.calls):
        conn.execute(
            _call_insert(conn.dialect.name),
            {
                "p_run_id": record.run_id, "p_agent": record.agent, "p_turn": record.turn,
                "p_seq": seq, "p_call_id": call.call_id, "p_name": call.name,
                "p_args_json": json.dumps(call.args), "p_status": "PENDING",
            },
        )  # fmt: skip
    data: dict[str, Any] = {
        "agent": record.agent, "turn": record.turn, "model": record.model,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "cost_usd": str(record.cost_usd), "spent_usd": str(events.spent_in(conn, record.run_id)),
        "finish_reason": record.finish_reason,
        "calls": [{"call_id": c.call_id, "name": c.name,
                   "call": events.describe_call(c.name, c.args)} for c in record.calls],
    }  # fmt: skip
    if record.text_in_event:
        data["text"] = str(record.message.get("content") or "")[:4000]
    events.emit_in(conn, record.run_id, f"turn:{record.agent}:{record.turn}", events.TURN, data)


# Built once, executed with parameters: a turn reads these before every model call (its own
# record and the turns before it in one query, their tool calls in another), a tool call reads
# its record before it runs. Read as rows, not through an ORM session (`_models`): measured
# with `bench.systems --tools 3`, the session was half of a turn's read and most of a claim.
_MINE = (col(Turn.run_id) == bindparam("p_run_id")) & (col(Turn.agent) == bindparam("p_agent"))
_CALLS_OF = (col(ToolCall.run_id) == bindparam("p_run_id")) & (
    col(ToolCall.agent) == bindparam("p_agent")
)
_TURNS = Turn.__table__  # type: ignore[attr-defined]
_CALLS = ToolCall.__table__  # type: ignore[attr-defined]
_TURNS_UPTO = (
    sa_select(_TURNS).where(_MINE, _TURNS.c.turn <= bindparam("p_turn")).order_by(_TURNS.c.turn)
)
_CALLS_UPTO = (
    sa_select(_CALLS)
    .where(_CALLS_OF, _CALLS.c.turn <= bindparam("p_turn"))
    .order_by(_CALLS.c.turn, _CALLS.c.seq)
)
_THE_CALL = sa_select(_CALLS).where(_CALLS_OF, _CALLS.c.call_id == bindparam("p_call_id"))


def _models(conn: Connection, statement: Any, params: dict[str, Any], model: type[M]) -> list[M]:
    """Rows as read-only snapshots of their model: every column set, no ORM state (they belong
    to no session; assigning to one raises)."""
    return _models_of(conn.execute(statement, params).mappings(), model)


def _models_of(rows: Iterable[Mapping[Any, Any]], model: type[M]) -> list[M]:
    configure_mappers()  # a no-op once done; column reads need the mapped attributes
    return [model.model_construct(**row) for row in rows]


@dataclass(frozen=True)
class TurnState:
    """What a turn reads before it runs, in one read: its own record (a retry's checkpoint),
    the agent's turns before it, and the earlier steps' outputs."""

    recorded: tuple[Turn, list[ToolCall]] | None
    history: list[tuple[Turn, list[ToolCall]]]
    context: dict[str, str]
    checks: Any = None  # with `artifacts`: the Coder's checks record (what `checks_of` reads)


def turn_state(
    engine: Engine, run_id: str, agent: str, turn: int, *, artifacts: bool = False
) -> TurnState:
    params = {"p_run_id": run_id, "p_agent": agent, "p_turn": turn}
    with engine.connect() as conn:
        turns = _models(conn, _TURNS_UPTO, params, Turn)
        calls: dict[int, list[ToolCall]] = {}
        if turns:
            for call in _models(conn, _CALLS_UPTO, params, ToolCall):
                calls.setdefault(call.turn, []).append(call)
        this = turns[-1] if turns and turns[-1].turn == turn else None
        recorded = None if this is None else (this, calls.get(turn, []))
        if this is not None and this.status == "COMPLETED":
            return TurnState(recorded, [], {})
        history = [
            (t, calls.get(t.turn, [])) for t in turns if t.turn < turn and t.status == "COMPLETED"
        ]
        checks = _checks_in(conn, run_id, ("coder",)).get("coder") if artifacts else None
        return TurnState(recorded, history, _context_in(conn, run_id, artifacts), checks)


@dataclass(frozen=True)
class CallResult:
    ok: bool
    summary: str
    result: str
    data: dict[str, Any] | None
    intent: bool
    duration_ms: int
    # For its event: the call in one line, its turn, and the result's text (TRACE_CONTENT only).
    call: str = ""
    turn: int = 0
    text_in_event: bool = False


_CALL_DONE = (
    update(ToolCall)
    .where(_CALLS_OF, col(ToolCall.call_id) == bindparam("p_call_id"))
    .values(status="COMPLETED", ok=bindparam("p_ok"), summary=bindparam("p_summary"),
            result=bindparam("p_result"), intent=bindparam("p_intent"),
            duration_ms=bindparam("p_duration_ms"), data_json=bindparam("p_data_json"),
            finished_at=bindparam("p_now"))
)  # fmt: skip
_CALL_STARTED = (
    update(ToolCall)
    .where(_CALLS_OF, col(ToolCall.call_id) == bindparam("p_call_id"))
    .values(started_at=bindparam("p_now"))
)


def tool_call_done(engine: Engine, run_id: str, agent: str, call_id: str, done: CallResult) -> None:
    """The call's result: the checkpoint its retries read (and its event)."""
    with engine.begin() as conn:
        data: dict[str, Any] = {
            "agent": agent, "turn": done.turn, "call_id": call_id, "call": done.call,
            "result": done.summary[:300], "ok": done.ok, "chars": len(done.result),
            "duration_ms": done.duration_ms, "intent": done.intent,
        }  # fmt: skip
        if done.text_in_event:
            data["text"] = done.result[:4000]
        events.emit_in(conn, run_id, f"tool:{agent}:{call_id}", events.TOOL, data)
        conn.execute(
            _CALL_DONE,
            {
                "p_run_id": run_id, "p_agent": agent, "p_call_id": call_id, "p_ok": done.ok,
                "p_summary": done.summary[:300], "p_result": done.result,
                "p_intent": done.intent, "p_duration_ms": done.duration_ms,
                "p_data_json": None if done.data is None else json.dumps(done.data, default=str),
                "p_now": utcnow(),
            },
        )  # fmt: skip


def tool_call_claim(engine: Engine, run_id: str, agent: str, call_id: str) -> ToolCall | None:
    """The recorded call (None if there is none), marked started unless it already was."""
    params = {"p_run_id": run_id, "p_agent": agent, "p_call_id": call_id}
    with engine.begin() as conn:
        found = conn.execute(_THE_CALL, params).mappings().first()
        if found is None:
            return None
        row = dict(found)
        if row["status"] != "COMPLETED" and row["started_at"] is None:
            row["started_at"] = utcnow()
            conn.execute(_CALL_STARTED, {**params, "p_now": row["started_at"]})
        return _models_of([row], ToolCall)[0]


def add_feedback(engine: Engine, run_id: str, agent: str, turn: int, text: str) -> None:
    """A user message for the agent's next turn, after this turn's tool results."""
    with engine.begin() as conn:
        conn.execute(
            update(Turn)
            .where(col(Turn.run_id) == run_id, col(Turn.agent) == agent, col(Turn.turn) == turn)
            .values(feedback=text)
        )


def turns_of(engine: Engine, run_id: str) -> tuple[list[Turn], list[ToolCall]]:
    """Every turn and tool call of a run (for its detail), in order."""
    with Session(engine) as session:
        turns = session.exec(select(Turn).where(Turn.run_id == run_id).order_by(col(Turn.id))).all()
        calls = session.exec(
            select(ToolCall).where(ToolCall.run_id == run_id).order_by(col(ToolCall.id))
        ).all()
    return list(turns), list(calls)


def tool_calls_named(engine: Engine, run_id: str, name: str) -> list[ToolCall]:
    """A run's finished calls of one tool (a shadow replays its primary's web results)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(ToolCall)
                .where(ToolCall.run_id == run_id, ToolCall.name == name,
                       ToolCall.status == "COMPLETED")
                .order_by(col(ToolCall.id))
            )
        )  # fmt: skip


def intended_files(engine: Engine, run_id: str) -> list[tuple[str, int]]:
    """A dry run's workspace: the files its `write_file` intents would have written (the last
    intent per path wins), with their sizes."""
    latest = _intended(engine, run_id)
    return [(path, len(content.encode())) for path, content in sorted(latest.items())]


def intended_file(engine: Engine, run_id: str, path: str) -> str | None:
    return _intended(engine, run_id).get(path)


def intended_files_content(engine: Engine, run_id: str) -> dict[str, str]:
    """A dry run's workspace with the files' content (path → text)."""
    return _intended(engine, run_id)


def _intended(engine: Engine, run_id: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for intent in intents_of(engine, run_id):
        if intent.tool != "write_file":
            continue
        args = json.loads(intent.args_json)
        if isinstance(args.get("path"), str):
            found[args["path"].strip()] = str(args.get("content", ""))
    return found


def step_usage_in(conn: Connection, run_id: str, agent: str, **fields: Any) -> None:
    """The step row after one of its turns: `fields`, and its tokens and cost as the sums of its
    turns (every attempt of each)."""
    upsert_step_in(conn, run_id, agent, **fields)
    conn.execute(_STEP_SUMS, {"p_run_id": run_id, "p_agent": agent})


# Built once (constructing it was a tenth of a turn's database time, bench --tools 3).
_STEP_SUMS = (
    update(Step)
    .where(col(Step.run_id) == bindparam("p_run_id"), col(Step.agent) == bindparam("p_agent"))
    .values(
        prompt_tokens=select(func.sum(Turn.prompt_tokens)).where(_MINE).scalar_subquery(),
        completion_tokens=select(func.sum(Turn.completion_tokens)).where(_MINE).scalar_subquery(),
        cost_usd=select(func.sum(Turn.cost_usd)).where(_MINE).scalar_subquery(),
    )
)


def finish_step(
    engine: Engine, run_id: str, agent: str, *, stop_reason: str | None, run_completed: bool
) -> str:
    """Close a step its loop ended (files written from a text answer, or stopped): COMPLETED,
    its output the files it wrote and its last answer, why it stopped in its notes. With
    `run_completed` (the last agent), the run ends COMPLETED with that output. Returns it."""
    with engine.begin() as conn:
        turns = conn.execute(
            select(Turn.message_json)
            .where(col(Turn.run_id) == run_id, col(Turn.agent) == agent,
                   col(Turn.status) == "COMPLETED")
            .order_by(col(Turn.turn).desc())
            .limit(1)
        ).all()  # fmt: skip
        last = json.loads(turns[0][0] or "{}").get("content") or "" if turns else ""
        written = [
            json.loads(args).get("path", "?")
            for args, in conn.execute(
                select(ToolCall.args_json).where(
                    col(ToolCall.run_id) == run_id, col(ToolCall.agent) == agent,
                    col(ToolCall.name) == "write_file", col(ToolCall.ok).is_(True),
                )
            )
        ]  # fmt: skip
        output = files_output(sorted(set(written)), last)
        if stop_reason:
            output = f"{output}\n\n({stop_reason})".strip()
        step = conn.execute(
            select(Step.notes).where(col(Step.run_id) == run_id, col(Step.agent) == agent)
        ).first()
        notes = "; ".join(n for n in ((step[0] if step else None), stop_reason) if n) or None
        upsert_step_in(
            conn, run_id, agent, status="COMPLETED", output=output, notes=notes,
            stop_reason=stop_reason, finished_at=utcnow(), reserved_usd=0,
        )  # fmt: skip
        step_finished_in(conn, run_id, agent, output, stop_reason)
        if run_completed:
            run_completed_in(conn, run_id=run_id, final_answer=output)
    return output


def step_finished_in(
    conn: Connection, run_id: str, agent: str, output: str, stop_reason: str | None = None
) -> None:
    """The event of a step that ended COMPLETED (its output's first line, why it stopped)."""
    first = output.strip().splitlines()[0][:200] if output.strip() else ""
    events.emit_in(
        conn, run_id, f"step:{agent}:finished", events.STEP,
        {"agent": agent, "status": "COMPLETED", "output": first, "chars": len(output),
         "stop_reason": stop_reason},
    )  # fmt: skip


def files_output(paths: list[str], answer: str) -> str:
    """A step's output that wrote files (or, in a dry run, would have): which, then its answer —
    worded the same either way, so a shadow's output compares with its primary's."""
    if not paths:
        return answer
    listed = "\n".join(f"- {p}" for p in paths)
    return f"Files ({len(paths)}):\n{listed}\n\n{answer}".strip()


def checks_of(engine: Engine, run_id: str, agent: str) -> Any:
    """A step's checks (JSON): the Executor's commands, or the Coder's results of running them."""
    return checks_of_steps(engine, run_id, (agent,)).get(agent)


def checks_of_steps(engine: Engine, run_id: str, agents: tuple[str, ...]) -> dict[str, Any]:
    """Those steps' checks (JSON), in one read; a step without any is absent."""
    with engine.connect() as conn:
        return _checks_in(conn, run_id, agents)


def save_checks(
    engine: Engine, run_id: str, agent: str, checks: Any, event: dict[str, Any] | None = None
) -> None:
    """A step's checks; `event`: a round's outcome for the run's watchers (`round` keys it)."""
    with engine.begin() as conn:
        upsert_step_in(conn, run_id, agent, checks_json=json.dumps(checks))
        if event is not None:
            key = f"checks:{agent}:{event.get('round', 0)}"
            events.emit_in(conn, run_id, key, events.CHECKS, {"agent": agent, **event})
