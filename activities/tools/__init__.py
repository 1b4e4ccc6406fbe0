"""Tools: typed functions the agents call, registered in one place, dispatched in one place.

A tool is an async function `fn(ctx: ToolContext, <typed arguments>)`. Its JSON schema — what the
model is shown — is derived from those arguments (`Annotated[str, Field(description=...)]` for a
description), never written by hand; the model's arguments are validated against it before the
tool runs, and a bad argument is an error the model reads, not a crash.

Each tool declares whether it has side effects. Dry-run (DRY_RUN, a run's `dry_run`, every shadow
run) is enforced here, at dispatch, not left to each tool: a side-effect tool called in dry-run
is never invoked; its intent — the tool, a one-line summary and the arguments — goes to the
registry's recorder (the app database), and the model is told what would have happened.

What reaches the model is a `ToolOutput`: the text it reads, a one-line summary for people (the
CLI, the dashboard, the Web UI), whether it worked, and optional structured data. A tool that
cannot do what was asked raises `ToolError`: its message goes back to the model as the result,
so the agent can correct itself — it never fails the step or re-bills the model call before it.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from crewline.telemetry import Tracing

ToolFn = Callable[..., Awaitable[Any]]
# (context, tool, arguments, summary, sequence number within the step) -> stored
Recorder = Callable[["ToolContext", str, dict[str, Any], str, int], Awaitable[None]]
# What the model reads of one tool result, at most (the rest is cut, and it is told so).
MAX_RESULT_CHARS = 12_000


class ToolError(Exception):
    """A tool could not do what was asked: the message goes back to the model as the result."""


@dataclass
class ToolOutput:
    text: str  # what the model reads
    summary: str = ""  # one line for people
    ok: bool = True
    data: dict[str, Any] | None = None  # structured (search hits, a file's path), stored

    def for_model(self) -> str:
        if len(self.text) <= MAX_RESULT_CHARS:
            return self.text
        return self.text[:MAX_RESULT_CHARS] + f"\n…[cut: {len(self.text)} characters in all]"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    side_effects: bool
    description: str
    fn: ToolFn
    # One line saying what a dry run would have done, from the call's arguments.
    describe: Callable[[dict[str, Any]], str] | None = None
    # Every call waits for a person's decision before it runs (the run pauses durably).
    requires_approval: bool = False

    def summary(self, args: dict[str, Any]) -> str:
        if self.describe is not None:
            return self.describe(args)
        return f"would call {self.name}({', '.join(sorted(args))})"

    def args_model(self) -> type[BaseModel]:
        return _args_model(self.name, self.fn)

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function declaration both providers take."""
        parameters = _parameters(self.name, self.fn)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


# Built once per tool: pydantic's create_model was half of a model turn's own CPU when it ran
# for every turn and every call (bench/systems.py --tools 3, py-spy).
@functools.cache
def _parameters(name: str, fn: ToolFn) -> dict[str, Any]:
    """The arguments' JSON schema (shared: read it, never change it)."""
    return _strip_titles(_args_model(name, fn).model_json_schema())  # type: ignore[no-any-return]


@functools.cache
def _args_model(name: str, fn: ToolFn) -> type[BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in list(inspect.signature(fn).parameters.values())[1:]:  # after the context
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, str), default)
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{name}_arguments", __config__={"extra": "forbid"}, **fields
    )
    return model


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


@dataclass
class ToolContext:
    run_id: str
    dry_run: bool = False
    agent: str = ""
    shadow_of: str | None = None  # a shadow run: web results are its primary's, replayed
    call_id: str = ""  # the model's id for this call: an idempotency key for tools that need one
    intents: list[dict[str, Any]] = field(default_factory=list)  # {tool, summary}
    intent_seq: int = 0  # where this call's intents are numbered from within the step


class UnknownToolError(KeyError):
    pass


def _output(result: Any) -> ToolOutput:
    if isinstance(result, ToolOutput):
        return result
    if result is None:
        return ToolOutput(text="done", summary="done")
    if isinstance(result, str):
        return ToolOutput(text=result, summary=result.splitlines()[0][:120] if result else "")
    return ToolOutput(text=json.dumps(result, default=str)[:MAX_RESULT_CHARS], summary="done")


class ToolRegistry:
    def __init__(self, recorder: Recorder | None = None, tracing: Tracing | None = None) -> None:
        self._tools: dict[str, ToolSpec] = {}
        self._recorder = recorder
        self._tracing = tracing or Tracing(None)

    def register(self, spec: ToolSpec) -> None:
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} registered twice")
        spec.args_model()  # a signature that cannot be described fails at start-up, not mid-run
        self._tools[spec.name] = spec

    def specs(self) -> list[ToolSpec]:
        return list(self._tools.values())

    def get(self, name: str) -> ToolSpec:
        spec = self._tools.get(name)
        if spec is None:
            raise UnknownToolError(name)
        return spec

    def schemas(self, names: list[str]) -> list[dict[str, Any]]:
        return [self.get(name).schema() for name in names]

    def manifest(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "side_effects": s.side_effects, "description": s.description}
            | ({"requires_approval": True} if s.requires_approval else {})
            for s in self._tools.values()
        ]

    async def dispatch(self, ctx: ToolContext, name: str, **args: Any) -> ToolOutput:
        """Run one call: arguments validated, dry-run enforced, errors returned as results."""
        try:
            spec = self.get(name)
        except UnknownToolError:
            known = ", ".join(sorted(self._tools))
            return ToolOutput(f"error: there is no tool {name!r} (tools: {known})", ok=False,
                              summary=f"unknown tool {name}")  # fmt: skip
        try:
            checked = spec.args_model().model_validate(args).model_dump()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            return ToolOutput(f"error: bad arguments for {name}: {problems}", ok=False,
                              summary="bad arguments")  # fmt: skip
        intent = spec.side_effects and ctx.dry_run
        with self._tracing.span(
            f"execute_tool {name}",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": ctx.call_id or None,
                "crewline.run_id": ctx.run_id,
                "crewline.agent": ctx.agent,
                "crewline.side_effects": spec.side_effects,
                "crewline.dry_run": ctx.dry_run,
                "crewline.intent_recorded": intent,
            },
        ):
            if intent:
                summary = spec.summary(checked)
                if self._recorder is not None:
                    await self._recorder(ctx, name, checked, summary, ctx.intent_seq)
                ctx.intents.append({"tool": name, "summary": summary})
                return ToolOutput(
                    text=f"(dry run: nothing was done) {summary}", summary=summary,
                    data={"intent": True, **{k: v for k, v in checked.items() if k != "content"}},
                )  # fmt: skip
            try:
                return _output(await spec.fn(ctx, **checked))
            except ToolError as exc:
                return ToolOutput(f"error: {exc}", ok=False, summary=str(exc)[:120])
