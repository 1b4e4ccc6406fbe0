"""Score a labelled set of (active, candidate) output pairs: recall on `diverged`, false alarms on
`equivalent`, overall, per agent, per kind and per layer, with the uncertain ones counted apart.
The schema is one JSON object per line: `id, agent, query, a, b, label (diverged|equivalent),
kind`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from versioning.divergence.detector import (
    DEFAULT_THRESHOLD,
    OFFLINE_LAYERS,
    Verdict,
    compare,
    offline_findings,
    strip_label,
    verdict,
)
from versioning.divergence.judge import Judge

# Kinds layers 1-2 are meant to decide without world knowledge (the targets).
DECIDABLE = frozenset({
    "empty", "refusal", "truncated", "language", "wrong-format", "broken-json", "leak",
    "unsafe-action", "scope-creep", "scope-creep-action",
})  # fmt: skip


class LabelledPair(BaseModel):
    id: str
    agent: str
    query: str = ""
    a: str
    b: str
    label: str
    kind: str = ""


def load(path: Path) -> list[LabelledPair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pair = LabelledPair.model_validate_json(line)
        except ValidationError as exc:
            raise ValueError(
                f"{path}:{number}: not a labelled pair ({exc.error_count()} errors)"
            ) from None
        if pair.label not in ("diverged", "equivalent"):
            raise ValueError(f"{path}:{number}: label must be diverged or equivalent")
        pairs.append(pair)
    return pairs


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    div = [r for r in rows if r["label"] == "diverged"]
    eq = [r for r in rows if r["label"] == "equivalent"]
    return {
        "recall": sum(r["alert"] for r in div) / len(div) if div else None,
        "false_alarm": sum(r["alert"] for r in eq) / len(eq) if eq else None,
        "diverged": len(div),
        "equivalent": len(eq),
        "caught": sum(r["alert"] for r in div),
        "false_alarms": sum(r["alert"] for r in eq),
        "uncertain": sum(r["status"] == "uncertain" for r in rows),
    }


def needs_judge(pair: LabelledPair, offline: Verdict) -> bool:
    """The judge reads only what layers 1-2 left quiet (an alert is already an alert)."""
    return not offline.alert and strip_label(pair.a).strip() != strip_label(pair.b).strip()


def judge_estimate(pairs: list[LabelledPair], judge: Judge, threshold: float) -> Decimal:
    total = Decimal(0)
    for pair in pairs:
        if needs_judge(pair, compare(pair.agent, pair.a, pair.b, query=pair.query,
                                     threshold=threshold)):  # fmt: skip
            total += judge.estimate_usd(pair.agent, pair.query, pair.a, pair.b)
    return total


async def _judged(
    pairs: list[LabelledPair], judge: Judge, threshold: float, concurrency: int = 4
) -> tuple[list[Verdict], Decimal]:
    gate = asyncio.Semaphore(concurrency)
    spent: list[Decimal] = []

    async def one(pair: LabelledPair) -> Verdict:
        a, b = strip_label(pair.a), strip_label(pair.b)
        offline = compare(pair.agent, a, b, query=pair.query, threshold=threshold)
        if not needs_judge(pair, offline):
            return offline
        async with gate:
            judgement = await judge.compare(pair.agent, pair.query, a, b)
        spent.append(judgement.cost_usd)
        found = offline_findings(pair.agent, a, b, pair.query) + judgement.findings
        return verdict(pair.agent, found, threshold=threshold, layers=(*OFFLINE_LAYERS, "judge"))

    verdicts = await asyncio.gather(*(one(p) for p in pairs))
    return list(verdicts), sum(spent, start=Decimal(0))


def evaluate(
    pairs: list[LabelledPair],
    threshold: float = DEFAULT_THRESHOLD,
    judge: Judge | None = None,
) -> dict[str, Any]:
    cost = Decimal(0)
    if judge is None:
        verdicts = [compare(p.agent, p.a, p.b, query=p.query, threshold=threshold) for p in pairs]
    else:
        verdicts, cost = asyncio.run(_judged(pairs, judge, threshold))
    rows: list[dict[str, Any]] = []
    for pair, v in zip(pairs, verdicts, strict=True):
        rows.append(
            {
                "id": pair.id, "agent": pair.agent, "label": pair.label, "kind": pair.kind,
                "score": v.score, "alert": v.alert, "status": v.status, "reasons": v.reasons,
                "layers": sorted({f.layer for f in v.findings if not f.uncertain}),
            }
        )  # fmt: skip
    by_agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_agent[str(row["agent"])].append(row)
        by_kind[f"{row['label']}/{row['kind']}"].append(row)
    decidable = [r for r in rows if r["label"] == "diverged" and r["kind"] in DECIDABLE]
    by_layer = Counter(layer for r in rows if r["alert"] for layer in r["layers"])
    return {
        "threshold": threshold,
        "layers": [*OFFLINE_LAYERS, *(["judge"] if judge else [])],
        "judge_cost_usd": str(cost),
        "overall": _rates(rows),
        "decidable": _rates(decidable) if decidable else None,
        "alerts_by_layer": dict(by_layer),
        "per_agent": {a: _rates(r) for a, r in sorted(by_agent.items())},
        "per_kind": {k: _rates(r) for k, r in sorted(by_kind.items())},
        "pairs": [{k: r[k] for k in ("id", "score", "alert", "status", "reasons")} for r in rows],
    }
