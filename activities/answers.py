"""What a model turn's message means for the agent's loop: tool calls to run, an answer cut off
that needs a continuation, or the final answer — checked against what the agent's spec says its
answer must be (`activities/specs.py`, `output`), with anything wrong said in the step's notes,
never hidden.

Pure functions of the turn's message and the agent's earlier turns: the turn activity calls
`decide` before committing, so the turn's record and what the workflow is told are one thing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from activities.llm import LLMResponse
from activities.specs import AgentSpec, Output
from activities.tools.files import parse_files
from records.runs import PlannedCall, files_output
from records.tables import ToolCall, Turn

CONTINUE_NOTE = "Your answer was cut off at the token limit. Continue exactly where it stopped."
MAX_CHECKS = 10
_URL = re.compile(r"https?://[^\s<>()\[\]{}\"'`]+")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+\S", re.M)
_JSON_BLOCK = re.compile(r"```(?:json)?\s*\n(?P<body>\[.*?\])\s*\n```", re.S)


@dataclass
class Decision:
    finished: bool = False  # the agent's final answer: its step is COMPLETED with `output`
    then_finish: bool = False  # run `calls` (made by the runtime), then close the step
    empty: bool = False  # nothing usable (no text, no tool call): ask again
    output: str = ""
    notes: str | None = None
    calls: list[PlannedCall] = field(default_factory=list)
    feedback: str | None = None  # a user message for the next turn
    checks: list[str] | None = None  # the Executor's acceptance checks


def _args(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return {"__invalid_json__": arguments[:2000]}
    return parsed if isinstance(parsed, dict) else {"__invalid_json__": arguments[:2000]}


def _cut_off_parts(history: list[tuple[Turn, list[ToolCall]]]) -> str:
    """The text of the agent's latest turns that were cut off at the token limit, in order: the
    beginning of the answer a continuation finishes."""
    parts: list[str] = []
    for turn, calls in reversed(history):
        if turn.finish_reason != "length" or calls:
            break
        parts.insert(0, json.loads(turn.message_json or "{}").get("content") or "")
    return "".join(parts)


def _written(history: list[tuple[Turn, list[ToolCall]]]) -> list[str]:
    return [
        str(json.loads(c.args_json).get("path", "?"))
        for _, calls in history
        for c in calls
        if c.name == "write_file" and c.ok
    ]


def _seen_urls(history: list[tuple[Turn, list[ToolCall]]]) -> set[str]:
    seen: set[str] = set()
    for _, calls in history:
        for call in calls:
            if call.name in ("web_search", "fetch_url") and call.result:
                seen.update(u.rstrip(".,;:") for u in _URL.findall(call.result))
                if call.name == "fetch_url":
                    seen.add(str(json.loads(call.args_json).get("url", "")).rstrip("/"))
    return {u.rstrip("/") for u in seen}


def checks_of(answer: str) -> list[str] | None:
    """The acceptance checks in an Executor's answer: a JSON list of commands (fenced, or the
    last JSON list in the text)."""
    blocks = [m["body"] for m in _JSON_BLOCK.finditer(answer)]
    if not blocks:
        blocks = re.findall(r"\[\s*\".*?\"\s*\]", answer, re.S)[-1:]
    for body in reversed(blocks):
        try:
            parsed = json.loads(body)
        except ValueError:
            continue
        if isinstance(parsed, list) and all(isinstance(c, str) for c in parsed):
            return [c.strip()[:300] for c in parsed if c.strip()][:MAX_CHECKS]
    return None


def decide(
    spec: AgentSpec,
    inp: Any,
    response: LLMResponse,
    history: list[tuple[Turn, list[ToolCall]]],
    provider: str,
    suffix: str = "",
) -> Decision:
    """What this turn's message means (see the module docstring). `suffix`: appended to a
    final answer (the Finalizer's: what the checks verified, from their record)."""
    if response.empty:
        return Decision(empty=True)
    if response.tool_calls and not inp.last_turn:
        calls = [PlannedCall(c.id, c.name, _args(c.arguments)) for c in response.tool_calls]
        return Decision(calls=calls, output=response.text)
    if response.finish_reason == "length" and not inp.last_turn:
        return Decision(output=response.text, feedback=CONTINUE_NOTE)
    answer = _cut_off_parts(history) + response.text
    notes: list[str] = []
    if inp.last_turn and history and history[-1][1]:
        notes.append(f"it reached its turn limit ({inp.turn} turns): its last turn had no tools")
    if response.finish_reason == "length":
        notes.append("its answer was cut off at the token limit (max_tokens) on its last turn")
    if response.tool_calls:
        notes.append("it asked for tools on its last turn; they were not run")
    if response.cut_from:
        notes.append(
            f"its answer was {response.cut_from:,} characters: the first "
            f"{len(response.text):,} are kept"
        )
    decision = Decision(finished=True, output=answer)
    if spec.output == Output.FILES:
        return _files(inp, answer, history, decision, notes, response.finish_reason == "length")
    if spec.output == Output.CHECKS:
        decision.checks = checks_of(answer)
        if decision.checks is None:
            notes.append("no acceptance checks were given (a JSON list of commands)")
    elif spec.output == Output.NOTES:
        cited = {u.rstrip(".,;:/") for u in _URL.findall(answer)}
        unseen = sorted(cited - _seen_urls(history))
        if unseen:
            notes.append(
                f"cites URLs it never got from a search or a page: {', '.join(unseen[:5])}"
            )
    elif spec.output == Output.STEPS and not _NUMBERED.search(answer):
        notes.append("the plan has no numbered steps")
    decision.notes = "; ".join(notes) or None
    decision.output += suffix
    return decision


def _files(
    inp: Any,
    answer: str,
    history: list[tuple[Turn, list[ToolCall]]],
    decision: Decision,
    notes: list[str],
    cut_off: bool,
) -> Decision:
    """The Coder's final answer: its files were written with `write_file`; an answer in the old
    text format (or Markdown file blocks) is read tolerantly and its files written by calls the
    runtime makes. Either way the step is closed by the workflow, after the acceptance checks
    (`then_finish`), not by this turn."""
    decision.finished, decision.then_finish = False, True
    parsed = parse_files(answer, cut_off=cut_off)
    if parsed.truncated:
        notes.append(f"cut off in the middle of {', '.join(parsed.truncated)}: written as is")
    if parsed.files:
        decision.calls = [
            PlannedCall(f"file-{inp.turn}-{n}", "write_file", {"path": path, "content": body})
            for n, (path, body) in enumerate(parsed.files.items())
        ]
        notes.append(f"its answer held {len(parsed.files)} file(s) as text; they were written")
    else:
        written = _written(history)
        if not written:
            notes.append("the Coder wrote no files")
        decision.output = files_output(sorted(set(written)), answer)
    decision.notes = "; ".join(notes) or None
    return decision
