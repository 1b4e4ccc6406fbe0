"""Does a request need external knowledge? A cheap, deterministic decision made before any call.

Deciding with a rule instead of an extra LLM call keeps the Researcher to exactly one model call
per run and makes the decision explainable ("why did it search?" has a recorded answer).
`RESEARCH_MODE=always|never` overrides it.
"""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import Engine
from sqlmodel import Session, select

from activities.tools.search import SearchOutcome
from records.statuses import TERMINAL as TERMINAL_STATUSES
from records.tables import Run, Step

# A shadow waits this long at most for its primary's search (the primary runs concurrently).
SHARED_RESEARCH_WAIT_S = 900.0

# Signals that the answer depends on facts a model may not have or may have stale.
_SIGNALS = re.compile(
    r"\b(latest|current|currently|today|recent|recently|news|release[sd]?|version|price[sd]?|"
    r"pricing|compare|comparison|vs\.?|versus|benchmark[s]?|who|when|where|docs|documentation|"
    r"api|library|libraries|framework|20[2-9][0-9]|research|look up|find out)\b",
    re.IGNORECASE,
)


def needs_research(query: str, mode: str) -> tuple[bool, str]:
    if mode == "always":
        return True, "RESEARCH_MODE=always"
    if mode == "never":
        return False, "RESEARCH_MODE=never"
    match = _SIGNALS.search(query)
    if match:
        return True, f"the request mentions {match.group(0)!r}"
    if query.rstrip().endswith("?"):
        return True, "the request is a question"
    return False, "a self-contained build request"


def _primary_research(engine: Engine, run_id: str) -> tuple[str | None, bool]:
    """(the primary's stored search outcome, whether the primary run has ended)."""
    with Session(engine) as session:
        step = session.exec(
            select(Step).where(Step.run_id == run_id, Step.agent == "researcher")
        ).first()
        run = session.get(Run, run_id)
    ended = run is not None and run.status in TERMINAL_STATUSES
    return (step.research_json if step is not None else None), ended


async def shared_research(engine: Engine, primary_run_id: str) -> SearchOutcome:
    """The search outcome the primary run used, once its researcher has stored it (the activity
    heartbeats meanwhile). A shadow never searches: the web must not be a difference."""
    deadline = asyncio.get_running_loop().time() + SHARED_RESEARCH_WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        stored, ended = await asyncio.to_thread(_primary_research, engine, primary_run_id)
        if stored is not None:
            return SearchOutcome.model_validate_json(stored)
        if ended:
            break
        await asyncio.sleep(0.25)
    return SearchOutcome(
        skipped_reason=f"the primary run {primary_run_id} has no research to share"
    )
