"""Where a run's time goes, read from its event history (server-side timestamps)."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

# (from event, to event) pairs, consecutive in a five-step pipeline's history.
LABELS = {
    (EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED):
        "activity completed → workflow task scheduled",
    (EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED):
        "workflow task scheduled → started (matching + poll)",
    (EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED):
        "workflow task started → completed (worker runs workflow code)",
    (EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):
        "workflow task completed → activity scheduled",
    (EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED):
        "activity scheduled → started (matching + poll)",
    (EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED):
        "activity started → completed (activity body incl. d)",
}  # fmt: skip


def breakdown(history: WorkflowHistory) -> dict[str, dict[str, float]]:
    """Median and count of each transition, in ms."""
    events = list(history.events)
    gaps: dict[str, list[float]] = defaultdict(list)
    for prev, cur in itertools.pairwise(events):
        label = LABELS.get((prev.event_type, cur.event_type))
        if label:
            gaps[label].append(_ms(prev, cur))
    return {k: {"median_ms": statistics.median(v), "count": len(v)} for k, v in gaps.items()}


def _ms(a: object, b: object) -> float:
    ta = a.event_time.ToDatetime()  # type: ignore[attr-defined]
    tb = b.event_time.ToDatetime()  # type: ignore[attr-defined]
    return (tb - ta).total_seconds() * 1000
