"""The bench's `--tools N` workload for crewline: the Researcher calls `web_search` N times, one
call per turn, then writes its notes; every other agent answers at once without a tool (the
Executor gives no acceptance checks, so nothing runs in the sandbox). The model and the search
backend answer instantly, so what is measured is what each durable step (a model turn or a tool
call) costs in crewline's own machinery: step rows, turns, ledger, breaker, heartbeats, Temporal.

The model is the `scripted` provider's subclass, and labels its answers the same way: offline,
never a model.
"""

from __future__ import annotations

from activities.llm import LLMRequest, LLMResponse, ScriptedProvider, ToolCallOut
from activities.tools.search import SearchHit
from crewline.settings import Settings


class ToolScript(ScriptedProvider):
    """The Researcher searches `tools` times (a new query each turn), then answers."""

    def __init__(self, settings: Settings, tools: int) -> None:
        super().__init__(settings)
        self._tools = tools

    async def complete(self, request: LLMRequest) -> LLMResponse:
        done = sum(1 for m in request.messages if m["role"] == "tool")
        if request.agent != "researcher" or done >= self._tools or not request.tools:
            text = f"{request.agent}: done (bench, scripted)."
            return self._answer(request, text, [])
        call = ToolCallOut(
            id=f"call_{done}", name="web_search", arguments=f'{{"query": "bench query {done}"}}'
        )
        return self._answer(request, "", [call])

    def _answer(self, request: LLMRequest, text: str, calls: list[ToolCallOut]) -> LLMResponse:
        return LLMResponse(
            text=text, model=request.model, provider=self.name, prompt_tokens=100,
            completion_tokens=20, tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop", usage_estimated=True, scripted=True,
        )  # fmt: skip


class InstantSearch:
    """Three hits at once, for any query."""

    name = "bench"

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        return [
            SearchHit(title=f"{query} {i}", url=f"https://example.com/{i}", snippet="x" * 150)
            for i in range(min(3, max_results))
        ]
