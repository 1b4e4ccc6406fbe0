"""The divergence detector on pairs written for these tests (never the development set): each
regression kind must alert with a reason naming it, each honest rewrite must stay quiet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CREWLINE
from versioning.divergence import compare

BASE_PLAN = """1. Create a PostgreSQL 16 database named `orders` on the staging host.
2. Run `alembic upgrade head` to apply the schema migrations.
3. Load the 2,500 sample orders from `fixtures/orders.csv`.
4. Point the API at the new database and restart it.
5. Check that `GET /orders?limit=10` returns 10 rows."""

BASE_CODE = """Here is the function:

```python
def bulk_discount(total: float, items: int) -> float:
    if items >= 10:
        return round(total * 0.9, 2)
    return total
```
"""

BASE_NOTES = """**Recommendation:** use SQLite for the prototype.

- It needs no server, and the whole database is one file you can copy.
- It handles a few hundred writes per second, which is plenty for 5 testers.
- Move to PostgreSQL before the public launch, when concurrent writes grow.

Source: https://www.sqlite.org/whentouse.html"""

BASE_JSON = '{"city": "Lisbon", "nights": 3, "budget_eur": 450, "hotel": true}'

DIVERGED = {
    "wrong figure": ("planner", BASE_PLAN, BASE_PLAN.replace("2,500 sample", "25,000 sample")),
    "dropped step": (
        "planner",
        BASE_PLAN,
        "\n".join(line for line in BASE_PLAN.splitlines() if "alembic" not in line)
        .replace("3.", "2.")
        .replace("4.", "3.")
        .replace("5.", "4."),
    ),
    "inverted condition": ("coder", BASE_CODE, BASE_CODE.replace("items >= 10", "items <= 10")),
    "changed constant": ("coder", BASE_CODE, BASE_CODE.replace("0.9", "0.09")),
    "removed check": (
        "coder",
        BASE_CODE,
        BASE_CODE.replace("    if items >= 10:\n        return round(total * 0.9, 2)\n", ""),
    ),
    "decision flip": (
        "researcher",
        BASE_NOTES,
        BASE_NOTES.replace("use SQLite for the prototype", "use MongoDB for the prototype"),
    ),
    "negation flip": (
        "finalizer",
        "No, you should not run the migration during business hours; it locks the table.",
        "Yes, you can run the migration during business hours; it locks the table.",
    ),
    "broken json": ("executor", BASE_JSON, BASE_JSON.replace('"hotel": true}', '"hotel": true,}')),
    "schema change": ("executor", BASE_JSON, BASE_JSON.replace('"budget_eur"', '"budget"')),
    "refusal": (
        "finalizer",
        BASE_NOTES,
        "I'm sorry, but I can't help with choosing a database for this project.",
    ),
    "truncated": ("researcher", BASE_NOTES, BASE_NOTES[: BASE_NOTES.index("which is plenty") + 9]),
    "empty": ("finalizer", BASE_NOTES, "## Recommendation\n\nTBD\n"),
    "language": (
        "finalizer",
        BASE_NOTES,
        "**Recomendación:** usa SQLite para el prototipo.\n\n- No necesita servidor y toda la "
        "base de datos es un solo archivo que puedes copiar.\n- Soporta unos cientos de "
        "escrituras por segundo, más que suficiente para 5 probadores.\n- Pasa a PostgreSQL "
        "antes del lanzamiento público, cuando crezcan las escrituras concurrentes.",
    ),
    "leaked key": (
        "executor",
        "Connect with the read-only role `reporter`.",
        "Connect with postgres://admin:S3cretPassw0rd@10.0.3.7:5432/prod as admin.",
    ),
    "new side effect": (
        "executor",
        "Call `calendar.list_events` for next week and summarise the free slots.",
        "Call `calendar.list_events` for next week, then `calendar.delete_event` for the "
        "overlapping stand-up, and summarise the free slots.",
    ),
    "claims an action": (
        "finalizer",
        "The annual plan costs $96 and the monthly plan $10; annual saves $24 a year.",
        "The annual plan costs $96 and the monthly plan $10; I've switched your account to the "
        "annual plan, which saves $24 a year.",
    ),
    "new source": (
        "researcher",
        BASE_NOTES,
        BASE_NOTES + "\nSee also: https://db-benchmarks.example.net/sqlite-vs-everything",
    ),
    "destructive command": (
        "executor",
        "Free disk space by removing logs older than 30 days: `find /var/log/app -mtime +30 -delete`.",
        "Free disk space by removing logs: `rm -rf /var/log/*`.",
    ),
}

EQUIVALENT = {
    "reworded": (
        "finalizer",
        "No, you should not run the migration during business hours; it locks the table.",
        "Don't run the migration during business hours: it locks the table while it runs.",
    ),
    "reformatted plan": (
        "planner",
        BASE_PLAN,
        "- Create a PostgreSQL 16 database named `orders` on the staging host.\n"
        "- Run `alembic upgrade head` to apply the schema migrations.\n"
        "- Load the 2,500 sample orders from `fixtures/orders.csv`.\n"
        "- Point the API at the new database and restart it.\n"
        "- Check that `GET /orders?limit=10` returns 10 rows.",
    ),
    "renamed code": (
        "coder",
        BASE_CODE,
        BASE_CODE.replace("bulk_discount", "apply_volume_discount")
        .replace("total", "amount")
        .replace("items", "quantity"),
    ),
    "reformatted code": (
        "coder",
        BASE_CODE,
        BASE_CODE.replace(
            "    if items >= 10:\n        return round(total * 0.9, 2)\n",
            "    if items >= 10: return round(total * 0.9, 2)  # 10% off\n",
        ),
    ),
    "json key order": (
        "executor",
        BASE_JSON,
        '{\n  "hotel": true,\n  "nights": 3,\n  "city": "Lisbon",\n  "budget_eur": 450\n}',
    ),
    "extra detail": (
        "researcher",
        BASE_NOTES,
        BASE_NOTES.replace(
            "Source:",
            "- SQLite's write-ahead log mode lets readers continue during a write.\n\nSource:",
        ),
    ),
    "reordered bullets": (
        "researcher",
        BASE_NOTES,
        "**Recommendation:** use SQLite for the prototype.\n\n"
        "- Move to PostgreSQL before the public launch, when concurrent writes grow.\n"
        "- It handles a few hundred writes per second, which is plenty for 5 testers.\n"
        "- It needs no server, and the whole database is one file you can copy.\n\n"
        "Source: https://www.sqlite.org/whentouse.html",
    ),
    "same decision, other reasons": (
        "researcher",
        BASE_NOTES,
        "**Recommendation:** use SQLite for the prototype.\n\n"
        "- Setup is nothing: the database is a single file and there is no server to run.\n"
        "- For 5 testers the write load is tiny, far below what SQLite handles.\n"
        "- Plan the move to PostgreSQL before the public launch.\n\n"
        "Source: https://www.sqlite.org/whentouse.html",
    ),
    "scripted label only": (
        "finalizer",
        "[scripted offline provider: canned demo output, not a real model · prompt 60e4f7]\nDone.",
        "[scripted offline provider: canned demo output, not a real model · prompt 5f4f0e]\nDone.",
    ),
}


@pytest.mark.parametrize("case", sorted(DIVERGED))
def test_regressions_alert_with_a_reason(case: str) -> None:
    agent, a, b = DIVERGED[case]
    verdict = compare(agent, a, b)
    assert verdict.alert, (case, verdict.score, verdict.reasons)
    assert 0 <= verdict.score < verdict.threshold and verdict.reasons


@pytest.mark.parametrize("case", sorted(EQUIVALENT))
def test_honest_rewrites_stay_quiet(case: str) -> None:
    agent, a, b = EQUIVALENT[case]
    verdict = compare(agent, a, b)
    assert not verdict.alert, (case, verdict.score, verdict.reasons)


def test_reasons_name_what_changed() -> None:
    agent, a, b = DIVERGED["wrong figure"]
    assert any("2500" in r and "25000" in r for r in compare(agent, a, b).reasons)
    agent, a, b = DIVERGED["decision flip"]
    assert any("mongodb" in r.lower() for r in compare(agent, a, b).reasons)
    agent, a, b = DIVERGED["inverted condition"]
    assert any("code" in r and ">=" in r for r in compare(agent, a, b).reasons)
    assert compare("planner", BASE_PLAN, BASE_PLAN).score == 1.0


def test_shadow_eval_command_scores_a_labelled_file(tmp_path: Path) -> None:
    rows = [
        {"id": f"t{n}", "agent": agent, "query": "", "a": a, "b": b, "label": label, "kind": kind}
        for n, (label, kind, (agent, a, b)) in enumerate(
            [("diverged", k, v) for k, v in DIVERGED.items()]
            + [("equivalent", k, v) for k, v in EQUIVALENT.items()]
        )
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    done = subprocess.run(
        [CREWLINE, "shadow", "eval", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overall"]["recall"] == 1.0 and report["overall"]["false_alarm"] == 0.0
    assert {p["id"] for p in report["pairs"]} == {r["id"] for r in rows}
    table = subprocess.run(
        [CREWLINE, "shadow", "eval", str(path)], capture_output=True, text=True, timeout=120
    )
    assert "recall" in table.stdout and "threshold" in table.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    refused = subprocess.run(
        [CREWLINE, "shadow", "eval", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "bad.jsonl:1" in refused.stderr


DEV_SET = Path(__file__).resolve().parents[2] / "shared" / "divergence" / "dev_pairs.jsonl"


@pytest.mark.skipif(
    not DEV_SET.is_file(), reason="the shared development set is not beside the repo"
)
def test_development_set_meets_the_target() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "shadow", "eval", str(DEV_SET), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for scope, rates in [("overall", report["overall"]), *report["per_agent"].items()]:
        assert rates["recall"] >= 0.9, (scope, rates)
        assert rates["false_alarm"] <= 0.1, (scope, rates)
