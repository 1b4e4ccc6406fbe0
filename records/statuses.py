"""Statuses and agent names: the one definition the runtime, the services, the API, the dashboard
and the CLI share. Values are stored (run and step rows, workflow histories): never rename one."""

from __future__ import annotations

from enum import StrEnum

# The pipeline, in order. A version bundle's agent specs are keyed by these names.
AGENTS: tuple[str, ...] = ("researcher", "planner", "executor", "coder", "finalizer")


class RunStatus(StrEnum):
    QUEUED = "QUEUED"  # accepted; its workflow is starting (or being repaired: services.reconcile)
    RUNNING = "RUNNING"
    WAITING_FOR_BUDGET = "WAITING_FOR_BUDGET"  # paused until the budget is raised
    WAITING_FOR_APPROVAL = "WAITING_FOR_APPROVAL"  # a tool call waits for a person's decision
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.BUDGET_EXCEEDED}
)
# What a run row says while its workflow may still be going (the reconciler checks these).
OPEN: tuple[RunStatus, ...] = tuple(s for s in RunStatus if s not in TERMINAL)


class StepStatus(StrEnum):
    PENDING = "PENDING"  # not started yet (shown, never stored)
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # the provider's circuit breaker is open; Temporal retries after it
    WAITING_FOR_RATE_LIMIT = "WAITING_FOR_RATE_LIMIT"
    WAITING_FOR_BUDGET = "WAITING_FOR_BUDGET"
    WAITING_FOR_APPROVAL = "WAITING_FOR_APPROVAL"
    ERROR = "ERROR"  # the last attempt failed; Temporal retries it
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"


def is_terminal(status: str) -> bool:
    return status in TERMINAL


class Approval(StrEnum):
    """A tool call's approval (`tool_call.approval`; None: it needed none)."""

    PENDING = "PENDING"  # asked; the run waits
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    TIMED_OUT = "TIMED_OUT"  # nobody answered before the deadline: denied
    CANCELLED = "CANCELLED"  # the run was cancelled while it waited
    WOULD_ASK = "WOULD_ASK"  # a shadow run: never asked, never run; recorded as an intent
