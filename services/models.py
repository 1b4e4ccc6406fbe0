"""The API's request and response shapes. Money is `Decimal`, rendered as a decimal string."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from records.statuses import RunStatus

MAX_QUERY_CHARS = 4000
MAX_OFFSET = 1_000_000
_PLAIN_DECIMAL = re.compile(r"^[+-]?[0-9]+(\.[0-9]{1,6})?$")
_ISO_START = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _plain_decimal(value: object) -> object:
    """Money as a plain decimal: no "5_0", no non-ASCII digits, nothing non-finite."""
    if isinstance(value, str) and not _PLAIN_DECIMAL.match(value.strip()):
        raise ValueError("must be a plain decimal number such as 0.50, at most 6 decimal places")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _iso_utc(value: object) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC. Numbers are not timestamps here."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and _ISO_START.match(value.strip()):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("is not a valid ISO 8601 date or date-time") from None
    else:
        raise ValueError(
            "must be an ISO 8601 date or date-time, e.g. 2026-11-01 or 2026-11-01T09:00Z"
        )
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# What OpenAPI says a money field takes (Pydantic's own schema for Decimal names no format).
_MONEY_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0.000001, "maximum": 1e12},
        {"type": "string", "pattern": r"^\+?(?=[0-9.]*[1-9])[0-9]{1,12}(\.[0-9]{1,6})?$"},
    ],
    "description": 'USD, e.g. "0.50": a string with at most 6 decimal places, or a number '
    "(rounded to 6 places)",
}


def _below(limit: str) -> str:
    """A regex for the decimal integers (no leading zeros) smaller than `limit` (digits)."""
    options = ["0"] if limit != "0" else []
    for length in range(1, len(limit)):
        options.append("[1-9]" + (f"[0-9]{{{length - 1}}}" if length > 1 else ""))
    for i, digit in enumerate(limit):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(limit) - i - 1
            options.append(
                limit[:i] + f"[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    return "|".join(dict.fromkeys(options))


def money_schema_up_to(cap: Decimal) -> dict[str, object]:
    """The money schema with a deployment's maximum (MAX_BUDGET_USD) stated exactly, for the
    number and the string form alike (a whole-dollar cap; a fractional one is stated as its
    whole part)."""
    top = str(int(cap))
    pattern = rf"^\+?(?=[0-9.]*[1-9])(?:(?:{_below(top)})(\.[0-9]{{1,6}})?|{top}(\.0{{1,6}})?)$"
    return {
        "anyOf": [
            {"type": "number", "minimum": 0.000001, "maximum": float(int(cap))},
            {"type": "string", "pattern": pattern},
        ],
        "description": f"{_MONEY_SCHEMA['description']}; at most {top} (MAX_BUDGET_USD)",
    }


MICRO = Decimal("0.000001")


def _micro(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -6:
        return value  # "0.01" stays "0.01"
    return value.quantize(MICRO, rounding=ROUND_HALF_EVEN)


Money = Annotated[
    Decimal, BeforeValidator(_plain_decimal), AfterValidator(_micro), WithJsonSchema(_MONEY_SCHEMA)
]


def plain(value: Decimal) -> str:
    """Money out as a plain decimal string: "0.00012", "0" — never "1.2E-4" or "0E-10"."""
    return "0" if value == 0 else format(value, "f")


# Money in answers (a decimal string, as the schema says).
Usd = Annotated[
    Decimal,
    PlainSerializer(plain, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}),
]
Timestamp = Annotated[datetime, BeforeValidator(_iso_utc)]


def _tool_names() -> list[str]:
    """The tools the agents can call (their specs' tool lists), for a run's `approve`."""
    from activities.specs import specs

    return sorted({tool for agent in specs().values() for tool in agent.tools})


def _a_tool(name: str) -> str:
    known = _tool_names()
    if name not in known:
        raise ValueError(f"no agent calls a tool {name[:64]!r}; tools: {', '.join(known)}")
    return name


ToolName = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_a_tool),
    WithJsonSchema({"type": "string", "enum": _tool_names()}),
]


class RunCreate(BaseModel):
    query: str = Field(
        max_length=MAX_QUERY_CHARS, pattern=r"\S", description="What the agents should do"
    )
    # Upper bound (MAX_BUDGET_USD) is a setting, checked by the handler.
    budget_usd: Money | None = Field(default=None, gt=0, allow_inf_nan=False)
    dry_run: StrictBool = Field(
        default=False,
        description="side-effect tools record what they would do (intents) instead of acting",
    )
    approve: list[ToolName] = Field(
        default=[],
        max_length=20,
        description="tools whose calls wait for a person's approval in this run, e.g. "
        '["write_file"] (besides the deployment\'s APPROVAL_REQUIRED_TOOLS)',
    )

    @field_validator("query", mode="before")
    @classmethod
    def _not_blank(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("query must not be empty")
            return value.strip()
        return value


class BudgetRaiseIn(BaseModel):
    budget_usd: Money = Field(gt=0, allow_inf_nan=False)


class RunLinks(BaseModel):
    self: str
    artifacts: str
    cancel: str
    costs: str
    temporal_ui: str
    trace: str | None = Field(
        default=None, description="the run's trace in Jaeger (when JAEGER_UI_URL is set)"
    )


class RunAccepted(BaseModel):
    run_id: str
    status: RunStatus
    trace_id: str | None = Field(default=None, description="its trace, when tracing is on")
    links: RunLinks


class ToolCallView(BaseModel):
    """One tool call of a turn: what it did, in a line, and how it went (not its raw content)."""

    call_id: str
    name: str
    summary: str = Field(description="the call in one line, e.g. web_search 'stripe intents'")
    status: str = Field(description="PENDING (asked for, not run yet) or COMPLETED")
    ok: bool | None = None
    result: str | None = Field(default=None, description="its outcome in one line")
    result_chars: int | None = None
    duration_ms: int | None = None
    intent: bool = Field(default=False, description="a dry run recorded what it would have done")
    approval: ApprovalView | None = Field(
        default=None, description="the call needed a person's approval: asked, decided"
    )


class ApprovalView(BaseModel):
    """A tool call that needed a person: what it is, why the agent wanted it, the decision."""

    run_id: str
    call_id: str
    agent: str
    tool: str
    call: str = Field(description="the call in one line, e.g. write_file 'game/main.py'")
    arguments: dict[str, Any] = Field(
        default={}, description="its arguments (long values cut at 2,000 characters)"
    )
    reason: str | None = Field(default=None, description="what the agent said as it asked")
    state: str = Field(description="PENDING, APPROVED, DENIED, TIMED_OUT, CANCELLED, WOULD_ASK")
    asked_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    note: str | None = Field(default=None, description="the decider's reason")


class ApprovalIn(BaseModel):
    decision: Literal["approve", "deny"]
    reason: str | None = Field(
        default=None, max_length=1000, description="why; a denial's reason goes to the agent"
    )


class ApprovalSent(BaseModel):
    run_id: str
    call_id: str
    decision: Literal["approve", "deny"]
    applied: bool = Field(
        description="the run has recorded it (false: it will when a worker picks it up)"
    )
    state: str = Field(description="the call's approval state as recorded now")


class TurnView(BaseModel):
    """One model turn of an agent's loop."""

    turn: int
    status: str
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: Usd | None = None
    attempt: int = 1
    finish_reason: str | None = None
    tool_calls: list[ToolCallView] = []


class StepOut(BaseModel):
    agent: str
    status: str
    output: str | None
    notes: str | None
    model: str | None
    provider: str | None
    version: str | None = None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempt: int
    error: str | None
    cost_usd: Usd | None
    started_at: datetime | None
    finished_at: datetime | None
    turns: list[TurnView] = Field(default=[], description="its loop: model turns and tool calls")
    stop_reason: str | None = Field(
        default=None, description="why its loop ended without it simply answering"
    )
    checks: Any = Field(default=None, description="acceptance checks (Executor) or results (Coder)")


class IntentOut(BaseModel):
    id: int
    agent: str
    tool: str
    summary: str
    url: str


class IntentDetail(IntentOut):
    args: dict[str, Any]


class FindingOut(BaseModel):
    layer: Literal["properties", "structure", "behaviour", "judge"]
    signal: str
    severity: float = Field(description="how sure the layer is that this is a regression")
    detail: str
    uncertain: bool = False
    why_uncertain: str | None = None


class DivergenceOut(BaseModel):
    run_id: str
    shadow_run_id: str
    agent: str
    active_version: str | None
    candidate_version: str | None
    score: float = Field(description="Π(1 - confidence) over the findings that count; 1.0: none")
    threshold: float = Field(description="DIVERGENCE_THRESHOLD when it was compared")
    alert: bool
    status: Literal["alert", "uncertain", "quiet"] = Field(
        description="alert: score below the threshold; uncertain: a layer spoke but cannot be "
        "trusted here (the judge flipped with the order, or the signal is the active version's "
        "own noise), shown apart from alerts; quiet: nothing found"
    )
    reasons: list[str] = Field(description="`layer/signal: detail`, most certain first")
    findings: list[FindingOut] = []
    layers: list[str] = Field(default=[], description="the layers that ran on this pair")
    notes: list[str] = Field(default=[], description="why a layer did not run")
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> DivergenceOut:
        return cls.model_validate(
            {
                **row.model_dump(), "reasons": row.reasons, "findings": row.findings,
                "status": row.verdict_status, "notes": row.notes,
                "layers": [x for x in (row.layers or "").split(",") if x],
            }
        )  # fmt: skip


class DivergenceDetail(DivergenceOut):
    primary_output: str
    shadow_output: str


class ShadowOut(BaseModel):
    run_id: str
    status: RunStatus
    version: str | None
    divergences: list[DivergenceOut] = []


class ArtifactOut(BaseModel):
    path: str
    size_bytes: int
    sha256: str
    url: str


class ChecksSummary(BaseModel):
    """The acceptance checks of a run: run in the sandbox on the Coder's files, or not (why)."""

    status: str = Field(description="passed, failed or not run")
    passed: int = 0
    total: int = 0
    rounds: int = 0
    why: str | None = Field(default=None, description="why they were not run")


class RunOut(BaseModel):
    run_id: str
    query: str
    status: RunStatus
    budget_usd: Usd | None
    provider: str | None
    final_answer: str | None
    error: str | None
    failed_agent: str | None
    version: str | None = Field(
        default=None, description="snapshot id of the version that ran it (null: unversioned)"
    )
    dry_run: bool | None = None
    shadow_of: str | None = Field(default=None, description="the primary run this shadows")
    key_id: str | None = Field(default=None, description="the API key that started it (its id)")
    trace_id: str | None = Field(
        default=None, description="its OpenTelemetry trace id, when tracing is on"
    )
    spent_usd: Usd | None = Field(
        default=None, description="what its LLM calls cost so far (settled ledger rows)"
    )
    created_at: datetime
    updated_at: datetime
    steps: list[StepOut] = []
    artifacts: list[ArtifactOut] = []
    intents: list[IntentOut] = Field(
        default=[], description="dry run: what side-effect tools would have done"
    )
    shadow: ShadowOut | None = Field(
        default=None, description="its shadow run on the candidate version, and the verdicts"
    )
    checks: ChecksSummary | None = Field(
        default=None, description="the acceptance checks (each round: the Coder step's checks)"
    )
    approvals: list[ApprovalView] = Field(
        default=[], description="tool calls that needed a person's approval (PENDING: waiting)"
    )
    links: RunLinks


class CallOut(BaseModel):
    agent: str
    provider: str
    model: str
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Usd
    input_per_mtok: Usd | None
    output_per_mtok: Usd | None
    price_source: str
    usage_source: str
    state: str = Field(
        default="settled", description="pending: in flight, its worst case reserved; settled"
    )
    cut_off_by: str | None = Field(
        default=None,
        description="why an estimated call has no reported usage: timeout, malformed, "
        "connection_lost, cancelled, worker_lost, unpriced",
    )
    shadow: bool
    created_at: datetime


class RunCosts(BaseModel):
    run_id: str
    budget_usd: Usd | None
    total_usd: Usd
    reserved_usd: Usd
    by_agent: dict[str, Usd]
    calls: list[CallOut]


class CostGroup(BaseModel):
    key: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    total_usd: Usd
    estimated_calls: int = Field(
        default=0, description="calls without reported usage (cut off), charged their worst case"
    )
    estimated_usd: Usd = Field(default=Decimal(0), description="what those calls add up to")


class CostReport(BaseModel):
    group_by: str
    total_usd: Usd
    groups: int
    limit: int
    offset: int
    items: list[CostGroup]


class RunPage(BaseModel):
    items: list[RunOut]
    total: int
    limit: int
    offset: int
