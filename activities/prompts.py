"""Prompt templates are data: one Markdown file per agent under `activities/prompts/`.

A file holds the system prompt, a `---user---` line, then the user template (`$name` placeholders,
`string.Template` syntax). Keeping them as files lets a version bundle snapshot them with the code.
They are read as package resources, not by path, so a worker running from a snapshot zip reads the
prompts inside that zip (`versioning/`), never the working tree's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from string import Template

SEPARATOR = "---user---"


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str


@cache
def _load(agent: str) -> tuple[str, Template]:
    text = (files("activities") / "prompts" / f"{agent}.md").read_text(encoding="utf-8")
    system, sep, user = text.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"prompt file for {agent} lacks a '{SEPARATOR}' line")
    return system.strip(), Template(user.strip())


def render(agent: str, **values: str) -> Prompt:
    system, template = _load(agent)
    return Prompt(
        system=Template(system).safe_substitute(values), user=template.safe_substitute(values)
    )
