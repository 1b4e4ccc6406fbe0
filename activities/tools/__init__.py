"""The one place tools are registered and dispatched.

Each tool declares whether it has side effects. Dry-run (every shadow run) is enforced here, at
dispatch, not left to each tool: a side-effect tool called in dry-run records an intent
`{tool, args}` and does nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

ToolFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    side_effects: bool
    description: str
    fn: ToolFn


@dataclass
class ToolContext:
    run_id: str
    dry_run: bool = False
    intents: list[dict[str, Any]] = field(default_factory=list)


class UnknownToolError(KeyError):
    pass


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(self, spec: ToolSpec) -> None:
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} registered twice")
        self._tools[spec.name] = spec

    def manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "side_effects": s.side_effects, "description": s.description}
            for s in self._tools.values()
        ]

    async def dispatch(self, ctx: ToolContext, name: str, **args: Any) -> Any:
        spec = self._tools.get(name)
        if spec is None:
            raise UnknownToolError(name)
        if spec.side_effects and ctx.dry_run:
            ctx.intents.append({"tool": name, "args": args})
            return None
        return await spec.fn(ctx, **args)
