"""Run statuses: the one list the workflow, the API and the CLI share (upper case, stored)."""

from __future__ import annotations

RUN_STATUSES: tuple[str, ...] = (
    "QUEUED",
    "RUNNING",
    "WAITING_FOR_BUDGET",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "BUDGET_EXCEEDED",
)
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"}
)
