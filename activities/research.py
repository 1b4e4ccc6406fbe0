"""A shadow run's web: the results its primary got, replayed — the web must not be a difference
between two versions.

A shadow's `web_search` answers with its primary's results for the same query (else every result
its primary's searches found), and its `fetch_url` with the page its primary read at that URL
(else it says the primary did not read it). The primary runs at the same time, so a shadow that
gets ahead waits for its primary's researcher (the activity heartbeats meanwhile), at most
`SHARED_RESEARCH_WAIT_S`.
"""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import Engine

from activities.tools import ToolOutput
from activities.tools.search import SearchHit, SearchOutcome, search_output
from records import runs as store
from records.statuses import TERMINAL, StepStatus
from records.tables import ToolCall

SHARED_RESEARCH_WAIT_S = 900.0
POLL_S = 0.25


def _primary_calls(engine: Engine, run_id: str, tool: str) -> tuple[list[ToolCall], bool]:
    """The primary's finished calls of `tool`, and whether its researcher is done."""
    calls = store.tool_calls_named(engine, run_id, tool)
    steps = {s.agent: s.status for s in store.steps_of(engine, run_id)}
    run = store.get_run(engine, run_id)
    done = steps.get("researcher") in (StepStatus.COMPLETED, StepStatus.FAILED) or (
        run is not None and run.status in TERMINAL
    )
    return calls, done


async def _wait_for(engine: Engine, run_id: str, tool: str, match: str) -> list[ToolCall]:
    deadline = asyncio.get_running_loop().time() + SHARED_RESEARCH_WAIT_S
    while True:
        calls, done = await asyncio.to_thread(_primary_calls, engine, run_id, tool)
        if done or any(json.loads(c.args_json).get(tool_key(tool)) == match for c in calls):
            return calls
        if asyncio.get_running_loop().time() > deadline:
            return calls
        await asyncio.sleep(POLL_S)


def tool_key(tool: str) -> str:
    return "query" if tool == "web_search" else "url"


async def replayed_search(engine: Engine, primary: str, query: str) -> ToolOutput:
    calls = await _wait_for(engine, primary, "web_search", query)
    same = [c for c in calls if json.loads(c.args_json).get("query") == query]
    hits: dict[str, SearchHit] = {}
    for call in same or calls:
        found = SearchOutcome.model_validate_json(call.data_json or "{}")
        for hit in found.hits:
            hits.setdefault(hit.url, hit)
    if not hits:
        reason = f"the primary run {primary} found no results to share"
        return search_output(query, SearchOutcome(skipped_reason=reason))
    return search_output(query, SearchOutcome(hits=list(hits.values())))


async def replayed_fetch(engine: Engine, primary: str, url: str) -> ToolOutput:
    calls = await _wait_for(engine, primary, "fetch_url", url)
    for call in calls:
        if json.loads(call.args_json).get("url") == url and call.result is not None:
            return ToolOutput(call.result, summary=call.summary or "", ok=bool(call.ok))
    return ToolOutput(
        f"error: {url} was not read by the primary run, so this shadow run cannot read it "
        "(shadows see only the web their primary saw)",
        ok=False, summary="not read by the primary",
    )  # fmt: skip
