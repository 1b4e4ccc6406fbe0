"""Agent specs: each agent as data (`activities/agents.yaml`) — its prompt, its tools, its turn
limit, the shape of its final answer and its model settings.

Read as a package resource, so a worker serving a snapshot reads the spec inside that snapshot's
zip, like the prompts; the pipeline workflow imports the same specs (deterministically: they are
part of the version), so its loop and the activities agree on every agent's limits.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib.resources import files

import yaml
from pydantic import BaseModel, Field, ValidationError

from records.statuses import AGENTS

SPEC_FILE = "agents.yaml"


class Output(StrEnum):
    TEXT = "text"
    NOTES = "notes"
    STEPS = "steps"
    CHECKS = "checks"
    FILES = "files"
    ANSWER = "answer"


class AgentSpec(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = ""
    prompt: str
    tools: list[str] = []
    max_turns: int = Field(default=4, ge=1, le=50)
    output: Output = Output.TEXT
    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)


class SpecError(ValueError):
    """The specs file is wrong; the message says where."""


def parse(text: str) -> dict[str, AgentSpec]:
    """The specs in `text` (YAML), checked: one per pipeline agent, nothing else."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{SPEC_FILE} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != set(AGENTS):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise SpecError(f"{SPEC_FILE} must define exactly the agents {list(AGENTS)}; found {found}")
    specs = {}
    for name in AGENTS:
        try:
            specs[name] = AgentSpec.model_validate({**raw[name], "name": name})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{SPEC_FILE}: {name}.{where}: {first['msg']}") from None
    return specs


@cache
def specs() -> dict[str, AgentSpec]:
    return parse((files("activities") / SPEC_FILE).read_text(encoding="utf-8"))


def spec(agent: str) -> AgentSpec:
    return specs()[agent]
