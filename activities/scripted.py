"""The `scripted` provider's turns: offline, for tests and demos only — never a model.

It plays each agent's part the way the agents are meant to work, so the offline demo shows the
loop: the Researcher calls `web_search` then writes notes citing what it found, the Executor
writes acceptance checks, the Coder writes its files through `write_file` (and fixes them when
told a check failed), the Finalizer answers. Wording varies from run to run (chosen by a hash of
the run id), as a real model's would, so calibration and shadow comparisons see honest resample
noise rather than identical text. The provider labels every answer as scripted.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from activities.llm import LLMRequest, ToolCallOut


def _request_of(request: LLMRequest) -> str:
    for message in request.messages:
        if message["role"] == "user":
            match = re.search(r"^Request: (.*)$", str(message.get("content") or ""), re.M)
            if match:
                return match.group(1).strip()
    return "the request"


def _pick(request: LLMRequest, options: list[str]) -> str:
    """One of `options`, the same for the same run, agent and turn, different across runs."""
    turn = sum(1 for m in request.messages if m["role"] == "assistant")
    seed = f"{request.tag}:{request.agent}:{turn}".encode()
    return options[int(hashlib.sha256(seed).hexdigest(), 16) % len(options)]


def _tool_results(request: LLMRequest) -> list[str]:
    return [str(m.get("content") or "") for m in request.messages if m["role"] == "tool"]


def _offered(request: LLMRequest, name: str) -> bool:
    return any(t.get("function", {}).get("name") == name for t in request.tools)


def _call(request: LLMRequest, name: str, **args: Any) -> ToolCallOut:
    turn = sum(1 for m in request.messages if m["role"] == "assistant")
    index = hashlib.sha256(f"{name}{json.dumps(args)}".encode()).hexdigest()[:8]
    return ToolCallOut(id=f"call_{turn}_{index}", name=name, arguments=json.dumps(args))


def _researcher(request: LLMRequest, goal: str) -> tuple[str, list[ToolCallOut]]:
    seen = _tool_results(request)
    if not seen and _offered(request, "web_search"):
        return "", [_call(request, "web_search", query=goal)]
    urls = sorted({u for text in seen for u in re.findall(r"https?://[^\s)\]]+", text)})
    lead = _pick(request, ["Research notes", "Notes from research", "What the research says"])
    if not urls:
        return (
            f"{lead} for '{goal}': no web results were available; planning from general "
            "knowledge.", [],
        )  # fmt: skip
    sources = "\n".join(f"- {u}" for u in urls[:5])
    return f"{lead} for '{goal}': the sources below cover it.\n\nSources:\n{sources}", []


def _planner(request: LLMRequest, goal: str) -> str:
    first = _pick(request, ["Clarify the scope", "Pin down the scope", "Agree on what is in scope"])
    return (
        f"1. {first} of '{goal}'.\n2. Sketch the modules.\n3. Write the code.\n"
        "4. Add a README with run instructions."
    )


def _executor(request: LLMRequest) -> str:
    files = _pick(request, ["main.py (entry point), README.md", "README.md and main.py (entry)"])
    checks = ["python -m py_compile main.py", "python main.py"]
    return (
        f"No gaps. Files: {files}. Run with `python main.py`.\n\n```json\n{json.dumps(checks)}\n```"
    )


def _coder(request: LLMRequest, goal: str) -> tuple[str, list[ToolCallOut]]:
    safe = goal.replace('"', "'").replace("\\", "/")
    if not _tool_results(request) and _offered(request, "write_file"):
        main = (
            '"""Scripted demo artifact (not written by a real model)."""\n\n\n'
            "def main() -> None:\n"
            f'    print("crewline scripted demo for: {safe}")\n\n\n'
            'if __name__ == "__main__":\n    main()\n'
        )
        readme = f"# {goal}\n\nScripted demo output. Run `python main.py`.\n"
        return "", [
            _call(request, "write_file", path="main.py", content=main),
            _call(request, "write_file", path="README.md", content=readme),
        ]
    said = _pick(request, ["Wrote main.py and README.md.", "main.py and README.md are written."])
    return said, []


def scripted_turn(request: LLMRequest) -> tuple[str, list[ToolCallOut]]:
    goal = _request_of(request)
    agent = request.agent
    if agent == "researcher":
        return _researcher(request, goal)
    if agent == "coder":
        return _coder(request, goal)
    if agent == "planner":
        return _planner(request, goal), []
    if agent == "executor":
        return _executor(request), []
    done = _pick(request, ["Done", "Finished", "All set"])
    return f"{done}: '{goal}'. The Coder wrote the files; run `python main.py`.", []
