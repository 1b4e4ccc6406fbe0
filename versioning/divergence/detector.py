"""Score v2 against v1: combine the signals into a score in [0, 1] with the reasons that fired.

score = Π (1 - severity) over the findings; below the agent's threshold is an alert. One strong
finding (a refusal, a leaked key, broken JSON, changed code behaviour, a changed figure) alerts on
its own; weak ones (a figure added, a source dropped) only together. Offline and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from versioning.divergence import effects, signals
from versioning.divergence.signals import Finding

# Agents' outputs differ in how much wording moves between honest versions; the thresholds are
# the score below which a change is reported (see `crewline shadow calibrate` for the noise).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "researcher": 0.5,
    "planner": 0.5,
    "executor": 0.5,
    "coder": 0.5,
    "finalizer": 0.5,
}
SCRIPTED_PREFIX = "[scripted offline provider"


@dataclass(frozen=True)
class Verdict:
    agent: str
    score: float
    threshold: float
    findings: list[Finding] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        return self.score < self.threshold

    @property
    def reasons(self) -> list[str]:
        return [f"{f.signal}: {f.detail}" for f in sorted(self.findings, key=lambda f: -f.severity)]


def _strip_label(text: str) -> str:
    # The scripted provider's label names its prompt: a version difference, not an output one.
    first, _, rest = text.partition("\n")
    return rest if first.startswith(SCRIPTED_PREFIX) else text


def compare(
    agent: str,
    a: str,
    b: str,
    *,
    query: str = "",
    thresholds: dict[str, float] | None = None,
) -> Verdict:
    threshold = (thresholds or DEFAULT_THRESHOLDS).get(agent, 0.5)
    a, b = _strip_label(a), _strip_label(b)
    if a.strip() == b.strip():
        return Verdict(agent, 1.0, threshold)
    findings: list[Finding] = []
    for check in (signals.emptiness, signals.refusal, effects.leaks, signals.truncation):
        findings += check(a, b)
    data, same_data = effects.structured_data(a, b)
    findings += data
    if not same_data:
        findings += signals.language(a, b, query)
        findings += effects.code_behaviour(a, b)
        for check in (
            signals.figures, signals.sources, signals.technical, signals.terms,
            signals.polarity, effects.actions, signals.steps, signals.verdict, signals.variants,
        ):  # fmt: skip
            findings += check(a, b)
        findings += signals.constraints(a, b, query)
        findings += signals.requested_section(a, b, query)
    score = 1.0
    for finding in findings:
        score *= 1.0 - finding.severity
    return Verdict(agent, round(score, 4), threshold, findings)
