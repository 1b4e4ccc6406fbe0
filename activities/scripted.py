"""Canned answers for the `scripted` provider: deterministic, offline, for tests and demos only.

The provider prefixes every answer with a label saying it is not a real model.
"""

from __future__ import annotations

import re


def _request_of(user_prompt: str) -> str:
    match = re.search(r"^Request: (.*)$", user_prompt, flags=re.MULTILINE)
    return match.group(1).strip() if match else "the request"


def scripted_answer(agent: str, user_prompt: str) -> str:
    request = _request_of(user_prompt)
    if agent == "researcher":
        return f"Research notes for '{request}': no live model was asked; see search results above."
    if agent == "planner":
        return (
            f"1. Clarify the scope of '{request}'.\n2. Sketch the modules.\n"
            "3. Write the code.\n4. Add a README with run instructions."
        )
    if agent == "executor":
        return "Files: main.py (entry point), README.md (how to run). Run with `python main.py`."
    if agent == "coder":
        safe = request.replace('"', "'")
        return (
            "=== FILE: main.py ===\n"
            '"""Scripted demo artifact (not written by a real model)."""\n\n\n'
            "def main() -> None:\n"
            f'    print("crewline scripted demo for: {safe}")\n\n\n'
            'if __name__ == "__main__":\n    main()\n'
            "=== END FILE ===\n"
            "=== FILE: README.md ===\n"
            f"# {request}\n\nScripted demo output. Run `python main.py`.\n"
            "=== END FILE ==="
        )
    return f"Done: '{request}'. Files were written by the Coder; run `python main.py`."
