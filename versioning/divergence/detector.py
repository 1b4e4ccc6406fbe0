"""The verdict on one pair: what each layer found, a score, and alert / uncertain / quiet.

Layers (each speaks only where it can be right):
1. `properties` — the candidate's output on its own (empty, refusal, truncated, language, format,
   leak, unsafe, claim of acting, new side effect), fired only when the active output lacks it;
2. `structure` — data compared as data, edits read as edits (a kept sentence whose figure,
   negation or named thing changed; a changed line of code);
3. `behaviour` — both versions' files through the same acceptance checks in the sandbox (at run
   time, in `services.shadow`; a labelled text pair has no checks);
4. `judge` — an LLM reads both answers (`DIVERGENCE_JUDGE`), in both orders;
5. calibration — the active version's own noise per agent and signal: a signal that fires on its
   own reruns is reported as *uncertain*, not as an alert.

Score = Π (1 - confidence) over the findings that count: 1.0 means nothing was found, and each
finding lowers it by how sure its layer is that it is a regression. A pair alerts when the score
falls below the threshold (`DIVERGENCE_THRESHOLD`, default 0.85 — one finding more than 15% sure
is enough). Uncertain findings are shown but do not lower the score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from versioning.divergence import properties, structure

DEFAULT_THRESHOLD = 0.85
# A signal that fires on at least this share of the active version's own reruns is noise there.
NOISE_LIMIT = 0.2
OFFLINE_LAYERS = ("properties", "structure")
SCRIPTED_PREFIX = "[scripted offline provider"


@dataclass(frozen=True)
class Finding:
    layer: str  # properties | structure | behaviour | judge
    signal: str  # e.g. refusal, unsafe:tls-off, figure-changed, decision
    severity: float  # how sure the layer is that this is a regression, 0..1
    detail: str
    uncertain: bool = False
    why_uncertain: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer, "signal": self.signal, "severity": self.severity,
            "detail": self.detail, "uncertain": self.uncertain,
            **({"why_uncertain": self.why_uncertain} if self.why_uncertain else {}),
        }  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    agent: str
    score: float
    threshold: float
    findings: list[Finding] = field(default_factory=list)
    layers: tuple[str, ...] = OFFLINE_LAYERS  # the layers that ran
    notes: tuple[str, ...] = ()  # e.g. why the judge did not run

    @property
    def alert(self) -> bool:
        return self.score < self.threshold

    @property
    def status(self) -> str:
        if self.alert:
            return "alert"
        return "uncertain" if any(f.uncertain for f in self.findings) else "quiet"

    @property
    def reasons(self) -> list[str]:
        ordered = sorted(self.findings, key=lambda f: (f.uncertain, -f.severity))
        return [
            f"{f.layer}/{f.signal}: {f.detail}"
            + (f" (uncertain: {f.why_uncertain})" if f.uncertain else "")
            for f in ordered
        ]


def strip_label(text: str) -> str:
    """The scripted provider's first line names its prompt: a version difference, not an output
    one."""
    first, _, rest = text.partition("\n")
    return rest if first.startswith(SCRIPTED_PREFIX) else text


def offline_findings(agent: str, a: str, b: str, query: str = "") -> list[Finding]:
    """Layers 1 and 2 on a text pair."""
    found = [
        Finding("properties", p.kind, p.severity, p.detail)
        for p in properties.compare(agent, a, b, query)
    ]
    if any(f.signal in ("empty", "refusal", "language") for f in found):
        return found  # the rest would only restate it
    found += [
        Finding("structure", c.kind, c.severity, c.detail) for c in structure.compare(agent, a, b)
    ]
    return found


def _with_noise(findings: Iterable[Finding], noise: Mapping[str, float] | None) -> list[Finding]:
    out = []
    for f in findings:
        rate = (noise or {}).get(f.signal.partition(":")[0])
        if rate is not None and rate >= NOISE_LIMIT and not f.uncertain:
            f = Finding(
                f.layer, f.signal, f.severity, f.detail, True,
                f"fires on {rate:.0%} of the active version's own reruns",
            )  # fmt: skip
        out.append(f)
    return out


def verdict(
    agent: str,
    findings: Iterable[Finding],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    layers: tuple[str, ...] = OFFLINE_LAYERS,
    noise: Mapping[str, float] | None = None,
    notes: tuple[str, ...] = (),
) -> Verdict:
    """Findings → verdict. `noise`: this agent's firing rate per signal family (the part of a
    signal before ':') between two runs of the active version itself."""
    kept = _with_noise(findings, noise)
    score = 1.0
    for f in kept:
        if not f.uncertain:
            score *= 1.0 - f.severity
    return Verdict(agent, round(score, 4), threshold, kept, layers, notes)


def compare(
    agent: str,
    a: str,
    b: str,
    *,
    query: str = "",
    threshold: float = DEFAULT_THRESHOLD,
    noise: Mapping[str, float] | None = None,
) -> Verdict:
    """The offline verdict (layers 1-2, calibrated by `noise` when given) on one text pair."""
    a, b = strip_label(a), strip_label(b)
    if a.strip() == b.strip():
        return Verdict(agent, 1.0, threshold)
    return verdict(agent, offline_findings(agent, a, b, query), threshold=threshold, noise=noise)
