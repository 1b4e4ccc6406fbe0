"""The pipeline workflow's contract with the control plane: its input, result, query and update
shapes (the workflow's code is in the version bundle; these shapes are the host's, so every
version reads and writes the same ones).

All are pydantic models with defaults for every field added later, so histories recorded before
a field existed still replay, and a field is only ever added.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel


class Compact(BaseModel):
    """A model that travels through workflow histories: a field left at its default counts as
    unset, so crewline's data converter (which omits unset fields) does not store it — the
    reader gets the same default back."""

    def model_post_init(self, context: Any, /) -> None:
        fields = type(self).model_fields
        self.__pydantic_fields_set__ -= {
            name
            for name in self.__pydantic_fields_set__
            if not fields[name].is_required() and getattr(self, name) == fields[name].default
        }


class StepRetry(BaseModel):
    """Per-run override of the step retry budget (from settings, via the API)."""

    max_attempts: int
    timeout_s: float


class PipelineInput(BaseModel):
    run_id: str
    query: str
    budget_usd: Decimal | None = None  # None: no budget (runs started outside the API)
    dry_run: bool = False
    retry: StepRetry | None = None
    # "stop": end BUDGET_EXCEEDED; "wait": pause until `raise_budget` gives more room.
    on_budget_exhausted: Literal["stop", "wait"] = "stop"
    # A shadow run: the primary run it re-runs on a candidate version (always dry-run).
    shadow_of: str | None = None
    # A cap on every agent's model turns (MAX_TURNS); None: each agent's spec says.
    max_turns: int | None = None
    # Rounds of acceptance checks the Coder gets (CHECK_ROUNDS); None: 3; 0: not run.
    check_rounds: int | None = None
    # Tools whose calls wait for a person's approval in this run (`POST /runs {"approve": …}`),
    # besides those registered `requires_approval` and the deployment's APPROVAL_REQUIRED_TOOLS.
    approve: list[str] = []
    # How long a call waits for a decision before it is denied (APPROVAL_TIMEOUT_S); None: 24 h.
    approval_timeout_s: float | None = None


class BudgetRaise(BaseModel):
    budget_usd: Decimal


class BudgetState(BaseModel):
    budget_usd: Decimal | None
    spent_usd: Decimal


class StepProgress(BaseModel):
    agent: str
    status: str = "PENDING"
    output: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempt: int | None = None
    error: str | None = None
    cost_usd: Decimal | None = None


class Progress(BaseModel):
    run_id: str
    status: str
    current_step: str | None
    steps: list[StepProgress]
    final_answer: str | None = None
    error: str | None = None
    budget_usd: Decimal | None = None
    spent_usd: Decimal = Decimal(0)
    approvals: list[PendingApproval] = []


class StepSummary(Compact):
    """A finished step in the run's result: what it used and cost. Its output is in the step row
    (and its activity's result), not repeated here."""

    agent: str
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempt: int = 1
    cost_usd: Decimal = Decimal(0)


class PipelineResult(BaseModel):
    run_id: str
    status: str
    final_answer: str
    steps: list[StepSummary]
    artifacts: list[str]
    scripted: bool
    spent_usd: Decimal = Decimal(0)


class CancelNote(BaseModel):
    """Who asked to cancel (a signal sent just before Temporal's cancel request), so the run's
    record says who stopped it — written by the workflow, like every status change."""

    by: str


class ApprovalDecision(BaseModel):
    """A person's decision on a tool call that waits for approval (the `decide_approval`
    signal): delivered durably even while no worker is up; the first decision of a call wins."""

    call_id: str
    decision: Literal["approve", "deny"]
    by: str  # "name (key id)"
    reason: str | None = None


class PendingApproval(BaseModel):
    """A tool call the run waits on (in the `progress` query)."""

    call_id: str
    agent: str
    tool: str
    summary: str = ""
    asked_at: str = ""  # ISO time
    deadline: str = ""  # ISO time: past it, the call is denied ("approval timed out")


# The workflow's name (stored in histories, used by every client that starts a run).
WORKFLOW_NAME = "AgentPipelineWorkflow"
