"""Activity-side writes to the app database.

Runs in activities (never in workflow code) because it is I/O. Each write is an upsert on a natural
key, so an activity that Temporal retries — or replays after a worker crash — updates its row
rather than adding a duplicate.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from activities.breaker import BreakerSnapshot
from crewline.db import (
    Artifact,
    BreakerRow,
    Intent,
    Run,
    Step,
    insert_for,
    session_scope,
    utcnow,
)


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


def run_completed_in(conn: Connection, *, run_id: str, final_answer: str) -> None:
    """The run is COMPLETED with this answer (written with its last step's ledger row)."""
    conn.execute(_RUN_COMPLETED, {"p_run_id": run_id, "p_answer": final_answer, "p_now": utcnow()})


_OUTPUTS = select(col(Step.agent), col(Step.output)).where(
    col(Step.run_id) == bindparam("p_run_id"), col(Step.status) == "COMPLETED"
)
_ARTIFACTS = select(col(Artifact.path)).where(col(Artifact.run_id) == bindparam("p_run_id"))


def context_of(engine: Engine, run_id: str, *, artifacts: bool = False) -> dict[str, str]:
    """What a step is given of the steps before it: their outputs, and (`artifacts`) the
    coder's files as a list. Read from the step rows (each step committed its output with its
    ledger row before the next step started) instead of travelling through the workflow's
    history."""
    with engine.connect() as conn:
        found = {
            agent: output or "" for agent, output in conn.execute(_OUTPUTS, {"p_run_id": run_id})
        }
        if artifacts and "coder" in found:
            paths = sorted(p for (p,) in conn.execute(_ARTIFACTS, {"p_run_id": run_id}))
            found["artifacts"] = "\n".join(f"- {p}" for p in paths) or "(none)"
    return found


def update_run(engine: Engine, run_id: str, **fields: Any) -> None:
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


def note_cancelled(engine: Engine, run_id: str, agent: str | None) -> None:
    """Say where a cancelled run stopped, after who cancelled it (written by the API)."""
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return
        where = f" at step {agent}" if agent else " between steps"
        reason = run.error or "cancelled"
        if where not in reason:
            run.error = reason + where
        session.add(run)


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


def save_breaker(engine: Engine, worker: str, snap: BreakerSnapshot) -> None:
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
