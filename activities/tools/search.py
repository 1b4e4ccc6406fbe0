"""Web search for the Researcher (`web_search`): DuckDuckGo through `ddgs`, or a fake backend in
tests.

Search never fails a run: an unreachable or failing backend gives an empty result with a
recorded reason, which the model reads ("no results: …: why"), and the Researcher carries on
without research. The error text is summarised, never pasted whole into a prompt.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from pydantic import BaseModel

from activities.tools import ToolOutput


class SearchHit(BaseModel):
    title: str
    url: str
    snippet: str


class SearchOutcome(BaseModel):
    hits: list[SearchHit] = []
    skipped_reason: str | None = None


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, max_results: int) -> list[SearchHit]: ...


class DdgsBackend:
    name = "duckduckgo"

    def __init__(self, timeout_s: int) -> None:
        self._timeout_s = timeout_s

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        from ddgs import DDGS

        def _run() -> list[dict[str, str]]:
            return DDGS(timeout=self._timeout_s).text(query, max_results=max_results)

        # ddgs is synchronous: keep it off the event loop, and bound it even if its own
        # timeout is not honoured by every backend it tries.
        rows = await asyncio.wait_for(asyncio.to_thread(_run), timeout=self._timeout_s * 3)
        return [
            SearchHit(
                title=str(r.get("title", "")),
                url=str(r.get("href", r.get("url", ""))),
                snippet=str(r.get("body", "")),
            )
            for r in rows
        ]


async def web_search(backend: SearchBackend | None, query: str, max_results: int) -> SearchOutcome:
    if backend is None:
        return SearchOutcome(skipped_reason="search disabled (SEARCH_BACKEND=none)")
    try:
        hits = await backend.search(query, max_results)
    except Exception as exc:  # any failure degrades to "no research", never fails the run
        reason = f"{backend.name} search unavailable ({type(exc).__name__})"
        return SearchOutcome(skipped_reason=reason)
    if not hits:
        return SearchOutcome(skipped_reason=f"{backend.name} search returned no results")
    return SearchOutcome(hits=hits)


def search_output(query: str, found: SearchOutcome) -> ToolOutput:
    """What the model reads of a search: numbered results, or that there are none and why."""
    data = found.model_dump()
    if not found.hits:
        why = found.skipped_reason or "no results"
        return ToolOutput(f"no results for {query!r}: {why}", summary=f"no results ({why})",
                          data=data)  # fmt: skip
    lines = [
        f"{n}. {hit.title}\n   {hit.url}\n   {hit.snippet}" for n, hit in enumerate(found.hits, 1)
    ]
    return ToolOutput(
        f"Results for {query!r}:\n" + "\n".join(lines),
        summary=f"{len(found.hits)} results", data=data,
    )  # fmt: skip
