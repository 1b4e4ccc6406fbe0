"""Score a labelled set of (v1, v2) output pairs: recall on `diverged`, false alarms on
`equivalent`, overall, per agent and per kind. The schema is one JSON object per line:
`id, agent, query, a, b, label (diverged|equivalent), kind`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from versioning.divergence.detector import DEFAULT_THRESHOLDS, compare


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
    }


def evaluate(
    pairs: list[LabelledPair], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    rows = []
    for pair in pairs:
        verdict = compare(pair.agent, pair.a, pair.b, query=pair.query, thresholds=thresholds)
        rows.append(
            {
                "id": pair.id, "agent": pair.agent, "label": pair.label, "kind": pair.kind,
                "score": verdict.score, "alert": verdict.alert, "reasons": verdict.reasons,
            }
        )  # fmt: skip
    by_agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_agent[str(row["agent"])].append(row)
        by_kind[f"{row['label']}/{row['kind']}"].append(row)
    used = thresholds or DEFAULT_THRESHOLDS
    return {
        "overall": _rates(rows),
        "per_agent": {
            a: {**_rates(r), "threshold": used.get(a, 0.5)} for a, r in sorted(by_agent.items())
        },
        "per_kind": {k: _rates(r) for k, r in sorted(by_kind.items())},
        "pairs": [{k: r[k] for k in ("id", "score", "alert", "reasons")} for r in rows],
    }
