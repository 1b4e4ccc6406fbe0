"""The other agent frameworks on Temporal, as benchmark baselines: the closest five-agent
sequential pipeline each can express, with an instant fake model, on the same server.

- `openai_agents`: the OpenAI Agents SDK with Temporal's plugin (`temporalio-openai-agents`);
- `pydantic_ai`: Pydantic AI's durable execution (`pydantic-ai-slim[temporal]`).

Installed with `pip install -e '.[bench]'` — never a dependency of crewline. Each lives in its
own module, imported only when asked for, so a missing peer is reported and left out.
"""

from __future__ import annotations

import importlib
from typing import Any

AGENTS = ("researcher", "planner", "executor", "coder", "finalizer")
# What each fake model answers: about the size of a short real answer.
ANSWER = "Done: " + "x" * 200
PEERS = {"openai-agents": "bench.peers.openai_agents", "pydantic-ai": "bench.peers.pydantic_ai"}


def load(system: str) -> Any:
    """The peer's module (with `plugin()` and `Pipeline`), or ImportError saying what to install."""
    try:
        return importlib.import_module(PEERS[system])
    except ImportError as exc:
        raise ImportError(
            f"{system}: {exc.name} is not installed; pip install -e '.[bench]'"
        ) from exc
