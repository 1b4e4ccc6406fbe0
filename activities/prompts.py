"""Prompt templates are data: one Markdown file per agent under `activities/prompts/`.

A file holds the system prompt, a `---user---` line, then the user template (`$name` placeholders,
`string.Template` syntax). Keeping them as files lets a version bundle snapshot them with the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

PROMPTS_DIR = Path(__file__).parent / "prompts"
SEPARATOR = "---user---"


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str


@cache
def _load(agent: str) -> tuple[str, Template]:
    text = (PROMPTS_DIR / f"{agent}.md").read_text(encoding="utf-8")
    system, sep, user = text.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"prompt file for {agent} lacks a '{SEPARATOR}' line")
    return system.strip(), Template(user.strip())


def render(agent: str, **values: str) -> Prompt:
    system, template = _load(agent)
    return Prompt(system=system, user=template.safe_substitute(values))
