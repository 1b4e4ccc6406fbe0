"""What the pipeline workflow and the agent loop's activities (`activities/agents.py`) exchange:
each activity's input and result. Small by design — they travel through the workflow's history
(outputs by reference: the whole text is in the step row, the history gets a preview) — and
changed additively only (a new field has a default), because recorded runs replay against them.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

from records.pipeline import Compact


class TurnInput(Compact):
    run_id: str
    query: str
    agent: str
    turn: int
    dry_run: bool = False
    # What the run may still spend (budget - settled spend); None = no budget.
    budget_left_usd: Decimal | None = None
    # A shadow run: the primary whose web results it replays; its calls are ledgered as shadow.
    shadow_of: str | None = None
    # The run's status this turn writes with its own rows: "RUNNING" (the run's first turn),
    # "COMPLETED" (the last agent's: written only if this turn is its final answer).
    run_status: str | None = None
    # The agent's turns end with this one: no tools offered, it must answer.
    last_turn: bool = False


class CallRef(Compact):
    """A tool call a turn asked for, as the workflow needs it (its arguments are in the row)."""

    call_id: str
    name: str
    summary: str = ""  # "web_search 'stripe payment intents'": the Web UI's activity summary
    fingerprint: str = ""  # name + arguments, hashed: an identical call repeated is a loop
    # The tool is registered `requires_approval`, or the deployment names it
    # (APPROVAL_REQUIRED_TOOLS): the call waits for a person (the run's own list is the
    # workflow's to add).
    requires_approval: bool = False


class TurnResult(Compact):
    agent: str
    turn: int
    finished: bool = False  # the agent answered: its step is COMPLETED
    then_finish: bool = False  # run `calls`, then close the step (files from a text answer)
    output: str = ""  # a preview; the finalizer's answer whole
    calls: list[CallRef] = []
    model: str = ""
    provider: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # What this turn's attempts cost (settled, lost ones at their worst case).
    cost_usd: Decimal = Decimal(0)
    attempt: int = 1
    scripted: bool = False
    finish_reason: str | None = None
    max_tokens_shrunk: bool = False


class ToolInput(Compact):
    run_id: str
    agent: str
    turn: int
    call_id: str
    name: str = ""
    dry_run: bool = False
    shadow_of: str | None = None
    # A call that needed a person: APPROVED (it runs), DENIED or TIMED_OUT (it does not; the
    # model reads why), WOULD_ASK (a shadow run: never asked, never run, recorded as an intent).
    approval: str | None = None
    approval_by: str | None = None
    approval_note: str | None = None


class ApprovalAsk(Compact):
    run_id: str
    agent: str
    call_id: str
    tool: str
    summary: str = ""
    deadline: str = ""  # ISO time


class ApprovalDone(Compact):
    run_id: str
    agent: str
    call_id: str
    tool: str
    state: str  # records.statuses.Approval
    by: str
    note: str | None = None


class ToolResult(Compact):
    call_id: str
    name: str
    ok: bool = True
    summary: str = ""
    chars: int = 0
    duration_ms: int = 0
    intent: bool = False


class ChecksInput(Compact):
    run_id: str
    agent: str
    round: int  # 1, 2, …
    rounds: int  # how many the agent may have
    turn: int  # the turn whose answer is checked (a failure's feedback goes after it)
    dry_run: bool = False
    # Close the step here when this round ends the loop (passed, not run, no round left, or
    # `last_turn`), instead of a bookkeeping activity after it; `run_status` as FinishInput's.
    close: bool = False
    last_turn: bool = False
    run_status: str | None = None


class ChecksResult(Compact):
    status: str  # passed | failed | not run
    passed: int = 0
    total: int = 0
    retry: bool = False  # failed, with a round left: the agent was told why, it goes on
    closed: bool = False  # the step was closed (ChecksInput.close): `output` is its output
    output: str = ""


class FinishInput(Compact):
    run_id: str
    agent: str
    stop_reason: str | None = None  # why the loop ended without the agent simply answering
    run_status: str | None = None  # "COMPLETED": the last agent's step ends the run


class FinishResult(Compact):
    output: str = ""


class RunUpdate(BaseModel):
    run_id: str
    status: str
    # Numbers the status changes of one run, so each is one event however often it is written.
    change: int | None = None
    query: str | None = None
    final_answer: str | None = None
    error: str | None = None
    failed_agent: str | None = None
    cancelled_agent: str | None = None
    budget_usd: Decimal | None = None
