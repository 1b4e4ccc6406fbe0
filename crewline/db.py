"""The app database: runs, their steps and artifacts (SQLite by default, PostgreSQL in production).

Rule upheld here: every write is idempotent on a natural key. A retried activity or a retried
HTTP request updates the row it wrote before instead of adding a second one — (run_id, agent) for
steps, (run_id, path) for artifacts, run_id and idempotency_key for runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Numeric,
    Text,
    UniqueConstraint,
    event,
    inspect,
    text,
)
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Run(SQLModel, table=True):
    run_id: str = Field(primary_key=True, max_length=64)
    query: str
    status: str = Field(default="QUEUED", index=True, max_length=32)
    budget_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(18, 6)))
    idempotency_key: str | None = Field(default=None, unique=True, max_length=200)
    provider: str | None = Field(default=None, max_length=32)
    final_answer: str | None = None
    error: str | None = None
    failed_agent: str | None = Field(default=None, max_length=32)
    # The snapshot id of the version that ran it (None: an unversioned worker, or not started).
    version: str | None = Field(default=None, index=True, max_length=64)
    # Side-effect tools recorded intents instead of acting (DRY_RUN, `dry_run`, every shadow).
    dry_run: bool | None = None
    # A shadow run: the primary run it re-ran on the candidate version.
    shadow_of: str | None = Field(default=None, index=True, max_length=64)
    # The API key that started it (its public id; a shadow carries its primary's).
    key_id: str | None = Field(default=None, index=True, max_length=32)
    # Its OpenTelemetry trace (32 hex), when tracing is on.
    trace_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Step(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "agent", name="uq_step_run_agent"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    agent: str = Field(max_length=32)
    position: int = 0
    status: str = Field(default="RUNNING", max_length=32)
    output: str | None = None
    notes: str | None = None
    model: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=32)
    version: str | None = Field(default=None, max_length=64)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempt: int = 1
    error: str | None = None
    cost_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 10)))
    # The researcher's search outcome (JSON): a shadow run of this run reuses it.
    research_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Worst case of the call in flight (0 when none): live "reserved" spend.
    reserved_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 10)))
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Artifact(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "path", name="uq_artifact_run_path"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    path: str = Field(max_length=512)
    size_bytes: int
    sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class Intent(SQLModel, table=True):
    """What a side-effect tool would have done in a dry run: the tool, a summary, the arguments.
    Keyed by (run, agent, seq) so a retried step rewrites its intents instead of adding more."""

    __table_args__ = (UniqueConstraint("run_id", "agent", "seq", name="uq_intent_run_agent_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    agent: str = Field(max_length=32)
    seq: int
    tool: str = Field(max_length=64)
    summary: str = Field(max_length=500)
    args_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


PICO = Decimal("1e12")


def to_pico(usd: Decimal) -> int:
    """Money is stored as integer pico-dollars: exact sums on SQLite and PostgreSQL alike."""
    return int((usd * PICO).to_integral_value())


def from_pico(value: int | None) -> Decimal:
    return (Decimal(value or 0) / PICO).normalize() if value else Decimal(0)


class LedgerEntry(SQLModel, table=True):
    """One LLM call attempt the provider accepted. Keyed so a retry or replay cannot double it."""

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("workflow_id", "activity_id", "attempt", name="uq_ledger_attempt"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    workflow_id: str = Field(max_length=200)
    activity_id: str = Field(max_length=64)
    attempt: int
    agent: str = Field(index=True, max_length=32)
    provider: str = Field(max_length=32)
    model: str = Field(index=True, max_length=128)
    version: str | None = Field(default=None, max_length=64)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cost_pusd: int = Field(sa_column=Column(BigInteger, nullable=False))
    input_per_mtok: str | None = Field(default=None, max_length=32)
    output_per_mtok: str | None = Field(default=None, max_length=32)
    price_source: str = Field(max_length=64)
    usage_source: str = Field(max_length=16)  # "reported" | "estimated"
    # "pending": reserved, the request may be at the provider; "settled" (None on rows written
    # before this column existed). A pending row holds the reservation's worst case.
    state: str | None = Field(default=None, index=True, max_length=16)
    # Why an estimated row has no reported usage: timeout, malformed, connection_lost,
    # cancelled, worker_lost (its worker died mid-call and a later attempt or the run's end
    # settled it).
    cut_off_by: str | None = Field(default=None, max_length=32)
    shadow: bool = False
    # The API key that started the run (copied from the run row as the row is written).
    key_id: str | None = Field(default=None, index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)

    @property
    def cost_usd(self) -> Decimal:
        return from_pico(self.cost_pusd)


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_key"

    key_id: str = Field(primary_key=True, max_length=32)  # public: in logs, rows and answers
    name: str = Field(max_length=64)
    scope: str = Field(max_length=16)  # "read" | "run" | "admin"
    key_sha256: str = Field(unique=True, max_length=64)
    source: str = Field(default="api", max_length=16)  # "api" | "bootstrap" | "env"
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class DashboardSession(SQLModel, table=True):
    """A browser signed in to the dashboard with an API key: the cookie holds a random token,
    the database only its SHA-256 and the key's public id (a revoked key ends its sessions)."""

    __tablename__ = "dashboard_session"

    token_sha256: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(index=True, max_length=32)
    csrf: str = Field(max_length=64)  # echoed by every form the session posts
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class BreakerRow(SQLModel, table=True):
    """Last known state of one worker's circuit breaker for one provider + model."""

    __tablename__ = "breaker_state"
    __table_args__ = (UniqueConstraint("worker", "provider", "model", name="uq_breaker"),)

    id: int | None = Field(default=None, primary_key=True)
    worker: str = Field(max_length=200)
    provider: str = Field(max_length=32)
    model: str = Field(max_length=128)
    state: str = Field(max_length=16)
    consecutive_failures: int = 0
    times_opened: int = 0
    opened_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RateBucket(SQLModel, table=True):
    """One provider model's shared rate limit (`activities/ratelimit.py`): its row lock orders
    the grants of every worker; `blocked_until` is when the provider said to come back."""

    __tablename__ = "rate_bucket"

    key: str = Field(primary_key=True, max_length=200)  # provider/model
    touched: float = 0.0  # the database's clock at the last grant (epoch seconds)
    blocked_until: float | None = None


class RateGrant(SQLModel, table=True):
    """A call let through a rate limit: when (the database's clock) and how many tokens."""

    __tablename__ = "rate_grant"

    id: int | None = Field(default=None, primary_key=True)
    bucket: str = Field(index=True, max_length=200)
    at: float = Field(index=True)
    tokens: int = 0
    attempt: str = Field(max_length=300)  # workflow/activity/attempt, for the logs


SQLITE_POOL_SIZE = 40


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # WAL lets the API read while the worker writes; busy_timeout rides out the short write
    # locks instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine, the tables and any columns added since the database was made."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Pool as many connections as the API has request threads (anyio's 40): with the
        # default 5 + 10 overflow, requests queued for a connection and each overflow one was
        # opened (with its pragmas) and closed per request — measured, POST /runs at 100
        # clients spent a fifth of its time there. An idle SQLite connection holds no lock.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE // 2,
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    SQLModel.metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Additive schema migration: a nullable column a newer crewline added to an existing table
    is added in place, so a data directory made by an older version keeps its runs and ledger.
    Anything else (a new NOT NULL column, a type change) refuses to start, saying so."""
    inspector = inspect(engine)
    added: list[str] = []
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"the database at {engine.url!r} lacks {table.name}.{column.name}, which "
                    "cannot be added automatically; migrate it or start from a new database"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
        if added:
            for index in table.indexes:  # create_all skips indexes of tables that existed
                index.create(engine, checkfirst=True)
    return added


def insert_for(where: Session | Connection | Engine | str, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT (SQLite and PostgreSQL both can, in their dialect);
    `where`: a session, connection or engine, or the dialect's name."""
    if isinstance(where, str):
        dialect = where
    else:
        dialect = (where.get_bind() if isinstance(where, Session) else where).dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


class DbRunner:
    """Runs the app database's synchronous calls off the event loop, in threads of its own.

    On SQLite one thread: one writer at a time in this process, so a write never waits on
    SQLite's lock (whose busy handler sleeps in steps of milliseconds) behind another write of
    the same worker — measured, contended writers were most of a worker's time under load. On
    PostgreSQL a small pool: its row locks let writers of different runs go in parallel.
    """

    def __init__(self, engine: Engine, threads: int | None = None) -> None:
        self.engine = engine
        size = threads or (1 if engine.dialect.name == "sqlite" else 8)
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="crewline-db")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(engine, *args, **kwargs)` in a database thread."""
        call = functools.partial(fn, self.engine, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except Exception:
            session.rollback()
            raise


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
