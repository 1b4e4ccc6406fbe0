"""The tables the agent runtime writes and the control plane reads: runs, their steps, artifacts,
intents, the cost ledger, circuit breakers and shared rate limits.

Part of the records interface (`records.INTERFACE`): a version bundle writes these through
`records.runs` and `records.ledger`, whatever crewline release serves it, so a change here is
additive (a new nullable column, a new table) or bumps the interface. Every write is idempotent on
a natural key: (run_id, agent) for steps, (run_id, path) for artifacts, (workflow, activity,
attempt) for ledger rows, run_id and idempotency_key for runs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Column, Numeric, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from crewline.db import utcnow


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
    # Tools whose calls wait for a person in this run (a JSON list; `POST /runs {"approve"}`).
    approve_json: str | None = Field(default=None, max_length=2000)
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
    # The agent's loop: its model turns so far, and why it stopped if it did not simply answer
    # (max turns, a tool call repeated, the budget).
    turn_count: int | None = None
    stop_reason: str | None = None
    # The Executor's acceptance checks, and the Coder's results of running them (JSON).
    checks_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
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
    # settled it), unpriced (answered under a model name no price is known for).
    cut_off_by: str | None = Field(default=None, max_length=32)
    shadow: bool = False
    # The API key that started the run (copied from the run row as the row is written).
    key_id: str | None = Field(default=None, index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)

    @property
    def cost_usd(self) -> Decimal:
        return from_pico(self.cost_pusd)


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


class Turn(SQLModel, table=True):
    """One model turn of an agent (the agent's step is its turns and their tool calls): written
    `COMPLETED` with the model's message in the same transaction as the call's ledger row, so a
    retried turn reads it instead of calling the model again."""

    __table_args__ = (UniqueConstraint("run_id", "agent", "turn", name="uq_turn"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    agent: str = Field(max_length=32)
    turn: int
    status: str = Field(default="RUNNING", max_length=32)
    # The assistant's message as the provider returned it: {"content", "tool_calls": [...]}.
    message_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    finish_reason: str | None = Field(default=None, max_length=32)
    model: str | None = Field(default=None, max_length=128)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: Decimal | None = Field(default=None, sa_column=Column(Numeric(20, 10)))
    attempt: int = 1
    # A user message the pipeline adds after this turn's tool results (the acceptance checks'
    # failures, "continue where you were cut off").
    feedback: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ToolCall(SQLModel, table=True):
    """One tool call a model turn asked for, and its result: the checkpoint a retried tool call
    reads (a finished call is never repeated)."""

    __tablename__ = "tool_call"
    __table_args__ = (UniqueConstraint("run_id", "agent", "call_id", name="uq_tool_call"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    agent: str = Field(max_length=32)
    turn: int
    seq: int  # its place among the turn's calls
    call_id: str = Field(max_length=128)  # the model's id for it
    name: str = Field(max_length=64)
    args_json: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="PENDING", max_length=32)  # PENDING | COMPLETED
    ok: bool | None = None
    summary: str | None = Field(default=None, max_length=300)  # one line for people
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # the model's
    data_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    intent: bool = False  # a dry run recorded what it would have done
    duration_ms: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # A call that needed a person's approval (`records.statuses.Approval`): asked when, decided
    # by whom, when and why.
    approval: str | None = Field(default=None, max_length=16)
    approval_asked_at: datetime | None = None
    approval_by: str | None = Field(default=None, max_length=200)
    approval_note: str | None = Field(default=None, max_length=1000)
    approval_decided_at: datetime | None = None


class RunEvent(SQLModel, table=True):
    """What happened in a run, numbered per run (`seq` 1, 2, …): the stream a watcher follows
    (`GET /runs/{id}/events`). Written in the transaction of the fact it reports, keyed by that
    fact (`key`: "turn:coder:2"), so a retried activity never adds an event twice."""

    __tablename__ = "run_event"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_run_event_seq"),
        UniqueConstraint("run_id", "key", name="uq_run_event_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64)
    seq: int
    key: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    data_json: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(default_factory=utcnow)
