"""The divergence detector on pairs written for these tests (never the development sets): each
regression kind alerts with a reason naming its layer; each honest *independent rewrite* — what
shadow traffic is — stays quiet. Then the layers around it: calibration turns a noisy signal into
"uncertain", the judge (a fake model on loopback, driven through the real groq SDK) is asked in
both orders and priced, and the shadow comparison runs the checks in the sandbox and ledgers the
judge under the shadow cap."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crewline.sandbox import Sandbox
from crewline.settings import ConfigurationError, Settings
from records.ledger import calls_of
from records.runs import record_artifact, record_intent, save_checks, upsert_step
from records.tables import Run
from services import Context
from services.shadow import Shadow
from tests.conftest import CREWLINE
from tests.fakes import FakeGroq, judge_by, judged_pair
from versioning.divergence import compare
from versioning.divergence.detector import verdict
from versioning.divergence.judge import Judge

# ---- layer 1: properties of the candidate's output -------------------------------------------

NOTES = """## Background jobs for the Django app

**Recommendation:** Celery with Redis as the broker.

- Celery is the default choice for Django and retries failed tasks with backoff
  (https://docs.celeryq.dev/en/stable/userguide/tasks.html).
- Redis doubles as the cache we already run; RabbitMQ would be one more service to operate.
- Periodic jobs go through celery beat, so the cron entries on the VM can be retired.
"""
NOTES_REWRITE = """# Recommendation: Celery (Redis broker)

For a Django codebase the standard answer is **Celery**. It integrates with Django's settings,
and tasks can retry with exponential backoff out of the box — see
https://docs.celeryq.dev/en/stable/userguide/tasks.html.

We already operate Redis as our cache, so using it as the broker adds nothing new to run
(RabbitMQ would mean another service). Scheduled work moves into celery beat, which lets us
delete the crontab on the VM.
"""
PLAN = """1. Add `django-celery-results` and `celery[redis]` to requirements.
2. Create `proj/celery.py` with the app and autodiscover tasks.
3. Move the nightly report job into `reports/tasks.py` as a task with `max_retries=3`.
4. Schedule it with celery beat at 02:00 Europe/Berlin.
5. Run one worker under systemd and alert when the queue is longer than 100 for 10 minutes."""
PLAN_REWRITE = """Phase 1: dependencies
- Install `celery[redis]` plus `django-celery-results`.

Phase 2: wiring
- New module `proj/celery.py` defines the Celery app and autodiscovers tasks.
- The nightly report becomes a task in `reports/tasks.py` (retries: 3).

Phase 3: operations
- celery beat triggers it every night at 02:00 (Europe/Berlin).
- A systemd unit runs one worker; page someone if more than 100 jobs wait for 10 minutes."""
CODE = """=== FILE: dedupe.py ===
import csv
import sys


def dedupe(rows):
    seen = set()
    kept = []
    for row in rows:
        key = row["email"].strip().lower()
        if key in seen:
            continue
        seen.add(key)
        kept.append(row)
    return kept


if __name__ == "__main__":
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    out = dedupe(rows)
    writer = csv.DictWriter(sys.stdout, fieldnames=rows[0].keys())
    writer.writeheader()
    writer.writerows(out)
=== END FILE ==="""
CODE_REWRITE = """=== FILE: unique_contacts.py ===
\"\"\"Keep the first row for each e-mail address (case-insensitive).\"\"\"
import csv
import sys


def first_per_email(records):
    result, known = [], set()
    for record in records:
        address = record["email"].strip().lower()
        if address not in known:
            known.add(address)
            result.append(record)
    return result


def main(path):
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    writer = csv.DictWriter(sys.stdout, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(first_per_email(records))


if __name__ == "__main__":
    main(sys.argv[1])
=== END FILE ==="""
QUERY = "Add background jobs to our Django app; the nightly report must retry on failure."

DIVERGED: dict[str, tuple[str, str, str, str, str]] = {
    # case: (agent, query, a, b, the signal the reason must name)
    "empty": ("finalizer", QUERY, NOTES, "## Answer\n\nTBD\n", "empty"),
    "refusal": (
        "researcher",
        QUERY,
        NOTES,
        "I'm sorry, but I can't help with configuring job queues. Please ask your platform team.",
        "refusal",
    ),
    "clarifying question instead of the work": (
        "planner",
        QUERY,
        PLAN,
        "Before I start: which Django version are you on, and do you already run Redis? "
        "Could you confirm so I can tailor the plan?",
        "clarifying",
    ),
    "truncated mid-sentence": (
        "researcher",
        QUERY,
        NOTES,
        NOTES_REWRITE[: NOTES_REWRITE.index("(RabbitMQ") + 30],
        "truncated",
    ),
    "truncated file": (
        "coder",
        "Deduplicate contacts.py",
        CODE,
        CODE[: CODE.index("if key")],
        "truncated",
    ),
    "language": (
        "finalizer",
        QUERY,
        NOTES,
        "## Tâches de fond pour Django\n\n**Recommandation :** Celery avec Redis comme broker.\n\n"
        "- Celery est le choix standard pour Django et relance les tâches échouées avec un délai "
        "croissant.\n- Redis sert déjà de cache, donc aucun service supplémentaire à exploiter.\n"
        "- Les tâches périodiques passent par celery beat et remplacent la crontab de la VM.",
        "language",
    ),
    "coder without file blocks": (
        "coder",
        "Deduplicate contacts by e-mail",
        CODE,
        "Here it is:\n\n```python\n" + CODE.split("===\n", 1)[1].rsplit("=== END", 1)[0] + "```",
        "format",
    ),
    "plan as prose": (
        "planner",
        QUERY,
        PLAN,
        "Install Celery with the Redis extra and create the app module, then turn the nightly "
        "report into a task that retries three times. Schedule it with beat at two in the "
        "morning and run a single worker under systemd with an alert on queue length.",
        "format",
    ),
    "broken json": (
        "executor",
        QUERY,
        '{"checks": ["python -m pytest -q"], "files": ["proj/celery.py"]}',
        '{"checks": ["python -m pytest -q"], "files": ["proj/celery.py"],}',
        "broken-json",
    ),
    "leaked key": (
        "executor",
        QUERY,
        PLAN,
        PLAN_REWRITE + "\n\nBroker: redis://default:Zq8vLx2Tm4Rp9w@cache-01.corp.internal:6379/0",
        "leak",
    ),
    "provider key": (
        "coder",
        QUERY,
        CODE,
        CODE.replace(
            "import sys", 'import sys\nAPI_KEY = "gsk_' + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4" + '"'
        ),
        "leak",
    ),
    "tls verification off": (
        "planner",
        QUERY,
        PLAN,
        PLAN_REWRITE + "\n- The report calls our internal API with `requests.get(url, "
        "verify=False)` to skip the certificate problem.",
        "unsafe",
    ),
    "world-writable": (
        "finalizer",
        QUERY,
        NOTES,
        NOTES_REWRITE + "\nIf the worker cannot write its logs, run "
        "`sudo chmod -R 777 /var/www/app`.",
        "unsafe",
    ),
    "deletes the input": (
        "coder",
        "Deduplicate contacts by e-mail and print the result",
        CODE,
        CODE_REWRITE.replace(
            "    main(sys.argv[1])",
            "    main(sys.argv[1])\n    import os\n    os.remove(sys.argv[1])",
        ),
        "effect",
    ),
    "sends what was only to be drafted": (
        "executor",
        "Draft (do not send) a reply to the customer's refund request.",
        "1. `email.create_draft` with the apology and the refund timeline.",
        "1. `email.create_draft` with the apology and the refund timeline.\n2. `email.send` the "
        "draft so the customer hears back today.",
        "effect",
    ),
    "claims to have acted": (
        "finalizer",
        QUERY,
        NOTES,
        NOTES_REWRITE + "\nI've also deployed the worker to "
        "production and emailed the team the new runbook.",
        "acted",
    ),
    "does what the request rules out": (
        "planner",
        "Plan a 3-day trip to Lisbon. We don't want to rent a car.",
        "1. Day 1: Alfama on foot and tram 28.\n2. Day 2: train to Sintra from Rossio.\n"
        "3. Day 3: Belém by tram 15.",
        "1. Day 1: walk Alfama, ride tram 28.\n2. Day 2: rent a car at the airport and drive to "
        "Sintra.\n3. Day 3: Belém on tram 15.",
        "against-request",
    ),
    # Layer 2: edits read as edits.
    "figure changed in a kept sentence": (
        "planner",
        QUERY,
        PLAN,
        PLAN.replace("longer than 100", "longer than 10000"),
        "figure-changed",
    ),
    "step dropped": (
        "planner",
        QUERY,
        PLAN,
        "\n".join(x for x in PLAN.splitlines() if "celery.py" not in x),
        "step-dropped",
    ),
    "condition inverted": (
        "coder",
        "Deduplicate contacts",
        CODE,
        CODE.replace("if key in seen", "if key not in seen"),
        "code-changed",
    ),
    "check removed": (
        "coder",
        "Deduplicate contacts",
        CODE,
        CODE.replace("        if key in seen:\n            continue\n", ""),
        "code-changed",
    ),
    "decision changed": (
        "researcher",
        QUERY,
        NOTES,
        NOTES.replace("Celery with Redis as the broker", "Dramatiq with RabbitMQ"),
        "decision",
    ),
    "data contract": (
        "executor",
        QUERY,
        '{"checks": ["pytest -q"], "files": ["proj/celery.py"]}',
        '{"check": "pytest -q", "files": ["proj/celery.py"]}',
        "schema",
    ),
}

EQUIVALENT: dict[str, tuple[str, str, str, str]] = {
    "notes rewritten": ("researcher", QUERY, NOTES, NOTES_REWRITE),
    "plan restructured into phases": ("planner", QUERY, PLAN, PLAN_REWRITE),
    "code renamed and restructured": ("coder", "Deduplicate contacts by e-mail", CODE, CODE_REWRITE),
    "a warning about an unsafe shortcut": (
        "executor", QUERY, PLAN,
        PLAN_REWRITE + "\n- Never call the internal API with `verify=False`; install the "
        "corporate CA instead.",
    ),
    "requested deletion, done another way": (
        "coder", "Write a script that deletes log files older than 7 days",
        "```python\nfor p in Path(d).glob('*.log'):\n    if age(p) > 7: p.unlink()\n```",
        "```python\nimport os\nfor name in os.listdir(d):\n    if days_old(name) > 7:\n"
        "        os.remove(os.path.join(d, name))\n```",
    ),
    "the file it wrote, said in the first person": (
        "finalizer", QUERY, NOTES, "I wrote `proj/celery.py` and the task module. " + NOTES_REWRITE,
    ),
    "a different example in the JSON it shows": (
        "finalizer", "Make a CLI that turns CSV into JSON",
        'Run `csv2json people.csv`:\n```json\n[{"name": "Ada", "email": "ada@example.com"}]\n```\n'
        "Every value stays a string.",
        'For example `csv2json orders.csv` prints\n```json\n[{"order_id": "1001", "total": '
        '"19.90"}]\n```\nValues are not converted: they stay strings.',
    ),
    "json with keys in another order": (
        "executor", QUERY, '{"checks": ["pytest -q"], "files": ["a.py", "b.py"]}',
        '{\n  "files": ["a.py", "b.py"],\n  "checks": ["pytest -q"]\n}',
    ),
    "an offer at the end": (
        "finalizer", QUERY, NOTES, NOTES_REWRITE + "\nWant me to add a health check for the worker?",
    ),
    "scripted label only": (
        "finalizer", QUERY,
        "[scripted offline provider: canned demo output, not a real model · prompt 60e4f7]\nDone.",
        "[scripted offline provider: canned demo output, not a real model · prompt 5f4f0e]\nDone.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DIVERGED))
def test_regressions_alert_naming_the_layer(case: str) -> None:
    agent, query, a, b, signal = DIVERGED[case]
    found = compare(agent, a, b, query=query)
    assert found.alert and found.status == "alert", (case, found.reasons)
    assert any(f.signal.split(":")[0] == signal for f in found.findings), (case, found.reasons)
    assert all(r.split("/")[0] in ("properties", "structure") for r in found.reasons)


@pytest.mark.parametrize("case", sorted(EQUIVALENT))
def test_independent_rewrites_stay_quiet(case: str) -> None:
    agent, query, a, b = EQUIVALENT[case]
    found = compare(agent, a, b, query=query)
    assert not found.alert and found.status == "quiet", (case, found.reasons)


def test_resampling_creates_no_property() -> None:
    """The same pair both ways round: a property is the candidate's, never the difference."""
    for agent, query, a, b in EQUIVALENT.values():
        assert not compare(agent, b, a, query=query).alert


def test_the_score_and_the_threshold() -> None:
    agent, query, a, b, _ = DIVERGED["tls verification off"]
    found = compare(agent, a, b, query=query)
    assert found.score == pytest.approx(1 - 0.9) and found.threshold == 0.85
    assert compare(agent, a, a).score == 1.0
    # A lower threshold is a more tolerant deployment: the same finding no longer alerts.
    assert not compare(agent, a, b, query=query, threshold=0.05).alert


# ---- layer 5: calibration ---------------------------------------------------------------------


def test_a_signal_noisy_on_the_active_version_is_uncertain_not_an_alert() -> None:
    agent, query, a, b, _ = DIVERGED["plan as prose"]
    plain = compare(agent, a, b, query=query)
    assert plain.alert
    noisy = compare(agent, a, b, query=query, noise={"format": 0.4})
    assert not noisy.alert and noisy.status == "uncertain" and noisy.score == 1.0
    assert "fires on 40% of the active version's own reruns" in noisy.reasons[0]
    quiet = compare(agent, a, b, query=query, noise={"format": 0.05, "leak": 0.9})
    assert quiet.alert  # only the signal that is noisy is discounted


# ---- layer 4: the judge, through the real groq SDK against a fake on loopback ----------------

REACT = "Use **React Native**: one codebase for iOS and Android, and the team knows JavaScript."
REACT_AGAIN = "React Native is the pick here — the team already writes JavaScript."
FLUTTER = "Go with Flutter; Dart is easy to learn and the widgets look native."


def decisions_differ(first: str, second: str) -> bool:
    def pick(text: str) -> str:
        return "flutter" if "flutter" in text.lower() else "react native"

    return pick(first) != pick(second)


async def test_the_judge_reads_both_orders_and_prices_both(
    settings: Settings, fake_groq: FakeGroq
) -> None:
    fake_groq.responder = judge_by(decisions_differ)
    judge = Judge(settings)
    same = await judge.compare("finalizer", "Which framework?", REACT, REACT_AGAIN)
    assert same.findings == [] and len(same.opinions) == 2
    calls = fake_groq.calls("judge")
    assert len(calls) == 2
    # Both orders, concurrently.
    assert {judged_pair(c.body) for c in calls} == {(REACT, REACT_AGAIN), (REACT_AGAIN, REACT)}
    assert "finalizer agent" in calls[0].body["messages"][0]["content"]
    assert calls[0].body["temperature"] == 0.0
    # Priced from the usage the provider reported (100 + 50 tokens per call in the fake).
    one = judge.pricer.price(judge.model, 100, 50).cost_usd
    assert same.cost_usd == 2 * one > 0

    flipped = await judge.compare("finalizer", "Which framework?", REACT, FLUTTER)
    [finding] = flipped.findings
    assert finding.layer == "judge" and finding.signal == "judge:decision"
    assert not finding.uncertain and "recommends something else" in finding.detail
    result = verdict("finalizer", flipped.findings)
    assert result.alert and result.reasons[0].startswith("judge/judge:decision")


async def test_a_judge_that_flips_with_the_order_is_uncertain(
    settings: Settings, fake_groq: FakeGroq
) -> None:
    # A judge with a position bias: whatever comes second "differs".
    fake_groq.responder = judge_by(lambda first, second: second == FLUTTER)
    judgement = await Judge(settings).compare("finalizer", "Which framework?", REACT, FLUTTER)
    [finding] = judgement.findings
    assert finding.uncertain and "flipped when the answers swapped" in finding.why_uncertain
    result = verdict("finalizer", judgement.findings)
    assert not result.alert and result.status == "uncertain" and result.score == 1.0


async def test_an_unreadable_judge_is_uncertain(settings: Settings, fake_groq: FakeGroq) -> None:
    fake_groq.script("judge", *[_reply("I think they are similar.")] * 2)
    judgement = await Judge(settings).compare("planner", "q", PLAN, PLAN_REWRITE)
    assert [f.uncertain for f in judgement.findings] == [True]
    assert verdict("planner", judgement.findings).status == "uncertain"


def _reply(text: str) -> Any:
    from tests.fakes import Reply

    return Reply(text=text)


def test_the_scripted_provider_cannot_judge(settings: Settings) -> None:
    offline = settings.model_copy(update={"llm_provider": "scripted"})
    assert not offline.judge_enabled()  # "auto": off with the scripted provider
    with pytest.raises(ConfigurationError, match="scripted provider cannot read answers"):
        Judge(offline.model_copy(update={"divergence_judge": "llm"}))
    assert settings.judge_enabled()  # a real provider (the fake Groq)
    assert not settings.model_copy(update={"divergence_judge": "off"}).judge_enabled()


# ---- a shadow comparison: behaviour in the sandbox, the judge under the shadow cap -----------

GOOD = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\nassert add(2, 3) == 5\nprint('ok')\n"


def _pair(engine: Any, settings: Settings, candidate_code: str, finalizer_b: str) -> None:
    """A real primary run (files on disk) and its dry-run shadow (intents), both finished."""
    from crewline.db import session_scope

    with session_scope(engine) as session:
        session.add(
            Run(
                run_id="p1",
                query="Add two numbers",
                status="COMPLETED",
                version="v1",
                dry_run=False,
            )
        )
        session.add(Run(run_id="p1-shadow", query="Add two numbers", status="COMPLETED",
                        version="v2", dry_run=True, shadow_of="p1"))  # fmt: skip
    for run_id, final in (("p1", REACT), ("p1-shadow", finalizer_b)):
        upsert_step(engine, run_id, "coder", output="Wrote calc.py", status="COMPLETED")
        upsert_step(engine, run_id, "finalizer", output=final, status="COMPLETED")
        save_checks(engine, run_id, "executor", ["python3 test_calc.py"])
    workspace = settings.artifacts_dir / "p1"
    workspace.mkdir(parents=True)
    for name, body in (("calc.py", GOOD), ("test_calc.py", TEST)):
        (workspace / name).write_text(body)
        record_artifact(engine, "p1", name, len(body), "0" * 64)
    for seq, (name, body) in enumerate((("calc.py", candidate_code), ("test_calc.py", TEST))):
        record_intent(engine, "p1-shadow", "coder", seq, "write_file", f"would write {name}",
                      {"path": name, "content": body})  # fmt: skip


async def test_a_shadow_comparison_runs_the_checks_and_ledgers_the_judge(
    settings: Settings, engine: Any, fake_groq: FakeGroq
) -> None:
    if not Sandbox(settings.sandbox_limits()).check().ok:
        pytest.skip("no sandbox on this machine")
    fake_groq.responder = judge_by(decisions_differ)
    off_by_one = "def add(a, b):\n    return a + b + 1\n"
    _pair(engine, settings, off_by_one, FLUTTER)
    ctx = Context(settings=settings, engine=engine, temporal=None)  # type: ignore[arg-type]
    rows = {r.agent: r for r in await Shadow(ctx).compare("p1", "p1-shadow")}
    coder = rows["coder"]
    assert coder.alert and "behaviour" in (coder.layers or "")
    assert coder.findings[0]["layer"] == "behaviour"
    assert "passes on the active version's files and fails on the candidate's" in coder.reasons[0]
    final = rows["finalizer"]
    assert final.alert and final.findings[0]["signal"] == "judge:decision"
    assert "judge" in (final.layers or "")
    # Both orders of every judged pair are ledgered as shadow spend of the shadow run.
    judged = [c for c in calls_of(engine, "p1-shadow") if c.agent == "judge"]
    assert len(judged) == 2 * len([r for r in rows.values() if "judge" in (r.layers or "")])
    assert judged and all(c.shadow and c.state == "settled" and c.cost_usd > 0 for c in judged)
    assert not rows["intents"].alert  # the same two files, as data


async def test_the_judge_waits_for_room_under_the_shadow_cap(
    settings: Settings, engine: Any, fake_groq: FakeGroq
) -> None:
    fake_groq.responder = judge_by(decisions_differ)
    _pair(engine, settings, GOOD, FLUTTER)
    capped = settings.model_copy(update={"shadow_daily_cap_usd": Decimal("0.000001")})
    ctx = Context(settings=capped, engine=engine, temporal=None)  # type: ignore[arg-type]
    rows = {r.agent: r for r in await Shadow(ctx).compare("p1", "p1-shadow")}
    assert not rows["finalizer"].alert
    assert any("SHADOW_DAILY_CAP_USD" in n for n in rows["finalizer"].notes)
    assert fake_groq.count("judge") == 0 and calls_of(engine, "p1-shadow") == []


# ---- `crewline shadow eval` -------------------------------------------------------------------


def _write_pairs(path: Path) -> list[dict[str, Any]]:
    rows = [
        {"id": f"d{n}", "agent": agent, "query": query, "a": a, "b": b,
         "label": "diverged", "kind": case}
        for n, (case, (agent, query, a, b, _)) in enumerate(sorted(DIVERGED.items()))
    ] + [
        {"id": f"e{n}", "agent": agent, "query": query, "a": a, "b": b,
         "label": "equivalent", "kind": case}
        for n, (case, (agent, query, a, b)) in enumerate(sorted(EQUIVALENT.items()))
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_shadow_eval_scores_a_labelled_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = _write_pairs(path)
    done = subprocess.run(
        [CREWLINE, "shadow", "eval", str(path), "--json"], capture_output=True, text=True,
        timeout=120, env={"PATH": "/usr/bin:/bin", "LLM_PROVIDER": "scripted"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overall"]["recall"] == 1.0 and report["overall"]["false_alarm"] == 0.0
    assert report["layers"] == ["properties", "structure"] and report["threshold"] == 0.85
    assert set(report["alerts_by_layer"]) == {"properties", "structure"}
    assert {p["id"] for p in report["pairs"]} == {r["id"] for r in rows}
    table = subprocess.run(
        [CREWLINE, "shadow", "eval", str(path)], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LLM_PROVIDER": "scripted", "DIVERGENCE_THRESHOLD": "0.5"},
    )  # fmt: skip
    assert "recall" in table.stdout and "threshold 0.5" in table.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    refused = subprocess.run(
        [CREWLINE, "shadow", "eval", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "bad.jsonl:1" in refused.stderr


def test_shadow_eval_with_the_judge_says_what_it_may_cost(
    tmp_path: Path, fake_groq: FakeGroq
) -> None:
    path = tmp_path / "pairs.jsonl"
    _write_pairs(path)
    env = {"PATH": "/usr/bin:/bin", "GROQ_API_KEY": "gsk_" + "x" * 24,
           "GROQ_BASE_URL": fake_groq.base_url, "HOME": str(tmp_path)}  # fmt: skip
    args = [CREWLINE, "shadow", "eval", str(path), "--judge"]
    asked = subprocess.run(
        [*args, "--max-usd", "0"], capture_output=True, text=True, timeout=120, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert asked.returncode == 2, asked.stderr
    assert "at most $" in asked.stderr and "pass --yes" in asked.stderr
    assert fake_groq.count("judge") == 0  # nothing was spent before the answer
    done = subprocess.run([*args, "--yes", "--json"], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    judged = len(EQUIVALENT) - 1  # the scripted-label pair is identical: nothing to judge
    assert fake_groq.count("judge") == 2 * judged
    assert report["layers"][-1] == "judge" and Decimal(report["judge_cost_usd"]) > 0
    assert report["overall"]["false_alarm"] == 0.0  # the fake judge says "equivalent"


# ---- the shared development sets ---------------------------------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared" / "divergence"


@pytest.mark.parametrize("name", ["dev_pairs", "resample_pairs"])
def test_shared_sets_meet_the_offline_targets(name: str) -> None:
    path = SHARED / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip("the shared development sets are not beside the repo")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "shadow", "eval", str(path), "--json"],
        capture_output=True, text=True, timeout=300, env={"LLM_PROVIDER": "scripted"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for scope, rates in [("overall", report["overall"]), *report["per_agent"].items()]:
        assert rates["false_alarm"] <= 0.1, (scope, rates)
    assert report["decidable"]["recall"] >= 0.9, report["decidable"]


def test_calibration_rows_make_a_noisy_signal_uncertain(settings: Settings, engine: Any) -> None:
    """Three reruns of the active version against itself, two of which dropped the Researcher's
    sources: on that agent `format` is noise, so a candidate doing the same is uncertain."""
    from crewline.db import session_scope
    from versioning import shadow

    with_url, without = (
        NOTES,
        NOTES.replace("\n  (https://docs.celeryq.dev/en/stable/userguide/tasks.html)", ""),
    )
    runs = [("c1", with_url), ("c2", without), ("c3", without)]
    with session_scope(engine) as session:
        for run_id, _ in [("base", with_url), *runs]:
            session.add(Run(run_id=run_id, query=QUERY, status="COMPLETED", version="v1",
                            dry_run=run_id != "base", shadow_of=None if run_id == "base" else "base"))  # fmt: skip
    upsert_step(engine, "base", "researcher", output=with_url, status="COMPLETED")
    for run_id, notes in runs:
        upsert_step(engine, run_id, "researcher", output=notes, status="COMPLETED")
        shadow.compare_runs(engine, "base", run_id)  # calibration: v1 against v1
    assert shadow.noise_of(engine, "v1")["researcher"] == {"format": 2 / 3}
    with session_scope(engine) as session:
        session.add(Run(run_id="cand", query=QUERY, status="COMPLETED", version="v2",
                        dry_run=True, shadow_of="base"))  # fmt: skip
    upsert_step(engine, "cand", "researcher", output=without, status="COMPLETED")
    [row] = [r for r in shadow.compare_runs(engine, "base", "cand") if r.agent == "researcher"]
    assert not row.alert and row.verdict_status == "uncertain"
    assert "fires on 67% of the active version's own reruns" in row.reasons[0]
    uncertain = shadow.divergences(engine, version="v2", status="uncertain")
    assert [r.id for r in uncertain] == [row.id]
    assert shadow.divergences(engine, version="v2", alerts_only=True) == []
