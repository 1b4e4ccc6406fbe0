"""Does a request need external knowledge? A cheap, deterministic decision made before any call.

Deciding with a rule instead of an extra LLM call keeps the Researcher to exactly one model call
per run and makes the decision explainable ("why did it search?" has a recorded answer).
`RESEARCH_MODE=always|never` overrides it.
"""

from __future__ import annotations

import re

# Signals that the answer depends on facts a model may not have or may have stale.
_SIGNALS = re.compile(
    r"\b(latest|current|currently|today|recent|recently|news|release[sd]?|version|price[sd]?|"
    r"pricing|compare|comparison|vs\.?|versus|benchmark[s]?|who|when|where|docs|documentation|"
    r"api|library|libraries|framework|20[2-9][0-9]|research|look up|find out)\b",
    re.IGNORECASE,
)


def needs_research(query: str, mode: str) -> tuple[bool, str]:
    if mode == "always":
        return True, "RESEARCH_MODE=always"
    if mode == "never":
        return False, "RESEARCH_MODE=never"
    match = _SIGNALS.search(query)
    if match:
        return True, f"the request mentions {match.group(0)!r}"
    if query.rstrip().endswith("?"):
        return True, "the request is a question"
    return False, "a self-contained build request"
