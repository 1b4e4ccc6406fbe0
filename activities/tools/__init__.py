"""The one place tools are registered and dispatched.

Each tool declares whether it has side effects. Dry-run (DRY_RUN, a run's `dry_run`, every
shadow run) is enforced here, at dispatch, not left to each tool: a side-effect tool called in
dry-run is never invoked; its intent — the tool, a one-line summary and the arguments — goes to
the registry's recorder (the app database), and the step's result carries only the summary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from crewline.telemetry import Tracing

ToolFn = Callable[..., Awaitable[Any]]
# (context, tool, arguments, summary, sequence number within the step) -> stored
Recorder = Callable[["ToolContext", str, dict[str, Any], str, int], Awaitable[None]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    side_effects: bool
    description: str
    fn: ToolFn
    # One line saying what a dry run would have done, from the call's arguments.
    describe: Callable[[dict[str, Any]], str] | None = None

    def summary(self, args: dict[str, Any]) -> str:
        if self.describe is not None:
            return self.describe(args)
        return f"would call {self.name}({', '.join(sorted(args))})"


@dataclass
class ToolContext:
    run_id: str
    dry_run: bool = False
    agent: str = ""
    intents: list[dict[str, Any]] = field(default_factory=list)  # {tool, summary}


class UnknownToolError(KeyError):
    pass


class ToolRegistry:
    def __init__(self, recorder: Recorder | None = None, tracing: Tracing | None = None) -> None:
        self._tools: dict[str, ToolSpec] = {}
        self._recorder = recorder
        self._tracing = tracing or Tracing(None)

    def register(self, spec: ToolSpec) -> None:
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} registered twice")
        self._tools[spec.name] = spec

    def specs(self) -> list[ToolSpec]:
        return list(self._tools.values())

    def manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "side_effects": s.side_effects, "description": s.description}
            for s in self._tools.values()
        ]

    async def dispatch(self, ctx: ToolContext, name: str, **args: Any) -> Any:
        spec = self._tools.get(name)
        if spec is None:
            raise UnknownToolError(name)
        intent = spec.side_effects and ctx.dry_run
        with self._tracing.span(
            f"execute_tool {name}",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "crewline.run_id": ctx.run_id,
                "crewline.agent": ctx.agent,
                "crewline.side_effects": spec.side_effects,
                "crewline.dry_run": ctx.dry_run,
                "crewline.intent_recorded": intent,
            },
        ):
            if intent:
                summary = spec.summary(args)
                if self._recorder is not None:
                    await self._recorder(ctx, name, args, summary, len(ctx.intents))
                ctx.intents.append({"tool": name, "summary": summary})
                return None
            return await spec.fn(ctx, **args)
