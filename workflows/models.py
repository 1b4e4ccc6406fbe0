"""The pipeline workflow's typed inputs, results, query and update shapes.

All are pydantic models with defaults for every field added later, so histories recorded before
a field existed still replay.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from activities.agents import AgentResult, Compact


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


class StepSummary(Compact):
    """A finished step in the run's result: what it used and cost. Its output is in the step row
    (and its activity's result), not repeated here."""

    agent: str
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempt: int = 1
    cost_usd: Decimal = Decimal(0)

    @classmethod
    def of(cls, result: AgentResult) -> StepSummary:
        return cls(
            agent=result.agent, model=result.model, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, attempt=result.attempt,
            cost_usd=result.cost_usd,
        )  # fmt: skip


class PipelineResult(BaseModel):
    run_id: str
    status: str
    final_answer: str
    steps: list[StepSummary]
    artifacts: list[str]
    scripted: bool
    spent_usd: Decimal = Decimal(0)
