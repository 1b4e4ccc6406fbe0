"""Shadow runs on the real dev server: an active and a candidate version, each served by a real
worker process from its snapshot, the real groq SDK against a fake Groq whose answers depend on
the prompt each version sends."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from crewline.db import session_scope
from crewline.settings import Settings
from records.ledger import calls_of
from records.runs import get_run, steps_of
from records.tables import LedgerEntry
from tests.conftest import ADMIN_KEY, assert_eventually, run_cli
from tests.fakes import NO_CHECKS, FakeGroq, judge_by
from tests.procs import WorkerProcesses
from tests.snapshots import checkout, snapshot, wait_live
from versioning import shadow

ANSWERS = {
    "v1": "**Recommendation:** use React Native for the mobile app. It builds for iOS and "
    "Android from one codebase, and your team already knows JavaScript.",
    "flip": "**Recommendation:** use Flutter for the mobile app. It builds for iOS and "
    "Android from one codebase, and your team already knows JavaScript.",
    "reword": "**Recommendation:** use React Native for the mobile app. One codebase builds for "
    "both Android and iOS, and the team already writes JavaScript.",
}


def by_prompt(agent: str, body: dict[str, Any]) -> str | None:
    """The finalizer answers by the marker its version's prompt carries."""
    if agent != "finalizer":
        return None
    system = body["messages"][0]["content"]
    for marker in ("flip", "reword"):
        if f"MARKER-{marker}" in system:
            return ANSWERS[marker]
    return ANSWERS["v1"]


async def wait_compared(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def compared() -> bool:
        found = (await api.get(f"/runs/{run_id}")).json().get("shadow")
        return bool(found and found["divergences"])

    await assert_eventually(compared, timeout=90, interval=0.3)
    return (await api.get(f"/runs/{run_id}")).json()  # type: ignore[no-any-return]


pytestmark = pytest.mark.timeout(240)


def completed(engine: Any, run_id: str) -> Any:
    def check() -> bool:
        run = get_run(engine, run_id)
        return run is not None and run.status == "COMPLETED"

    return check


async def start_run(api: httpx.AsyncClient) -> str:
    started = await api.post("/runs", json={"query": "Which framework for our mobile app?"})
    assert started.status_code == 202, started.text
    return started.json()["run_id"]  # type: ignore[no-any-return]


def three_versions(settings: Settings, engine: Any, tmp_path: Path) -> dict[str, str]:
    """v1 (the active prompt), and two candidates the fakes answer differently for."""
    lines = {"v1": "Be clear.", "flip": "MARKER-flip", "reword": "MARKER-reword"}
    return {
        n: snapshot(settings, engine, checkout(tmp_path / n, line)) for n, line in lines.items()
    }


async def serve_and_activate_v1(
    workers: WorkerProcesses,
    client: Client,
    settings: Settings,
    api: httpx.AsyncClient,
    ids: dict[str, str],
) -> None:
    for version in ids.values():
        workers.spawn("worker", "--version", version)
    await wait_live(client, settings, *ids.values())
    assert (await api.post(f"/versions/{ids['v1']}/activate", json={})).status_code == 200


async def test_shadow_flags_a_decision_flip_and_not_a_rewording(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    fake_groq.responder = by_prompt
    ids = three_versions(settings, engine, tmp_path)
    with WorkerProcesses(settings, tmp_path) as workers:
        await serve_and_activate_v1(workers, client, settings, api, ids)
        turned = await api.post(f"/versions/{ids['flip']}/shadow", json={"rate": 1.0})
        assert turned.status_code == 200 and turned.json()["candidate"] == ids["flip"]

        flipped_id = await start_run(api)
        flipped = await wait_compared(api, flipped_id)
        assert (
            flipped["status"] == "COMPLETED"
            and flipped["final_answer"] == ANSWERS["v1"] + NO_CHECKS
        )
        verdicts = {d["agent"]: d for d in flipped["shadow"]["divergences"]}
        assert verdicts["finalizer"]["alert"], verdicts["finalizer"]
        assert any("flutter" in r.lower() for r in verdicts["finalizer"]["reasons"])
        assert not any(v["alert"] for agent, v in verdicts.items() if agent != "finalizer")

        assert (
            await api.post(f"/versions/{ids['reword']}/shadow", json={"rate": 1.0})
        ).status_code == 200
        reworded_id = await start_run(api)
        reworded = await wait_compared(api, reworded_id)
        assert not any(d["alert"] for d in reworded["shadow"]["divergences"]), reworded["shadow"]

    shadow_id = flipped["shadow"]["run_id"]
    shadow_run = (await api.get(f"/runs/{shadow_id}")).json()
    assert shadow_run["dry_run"] and shadow_run["shadow_of"] == flipped_id
    assert shadow_run["version"] == ids["flip"] and shadow_run["artifacts"] == []
    # The dashboard's shadow report shows the flip side by side, the changed words marked.
    signed = await api.post("/ui/login", data={"key": ADMIN_KEY})
    assert signed.status_code == 303
    page = (await api.get(f"/ui/versions?report={ids['flip']}")).text
    assert f"Shadow report: <code>{ids['flip']}</code>" in page
    assert "<del>React Native</del>" in page and "<ins>Flutter</ins>" in page
    assert [i["summary"] for i in shadow_run["intents"]] == ["would write snake.py (15 bytes)"]
    assert not (settings.artifacts_dir / shadow_id).exists()  # the shadow wrote no file
    assert (settings.artifacts_dir / flipped_id / "snake.py").is_file()  # the primary did
    # Its spend is ledgered as shadow spend.
    assert {c.shadow for c in calls_of(engine, shadow_id)} == {True}
    assert {c.shadow for c in calls_of(engine, flipped_id)} == {False}
    primary = get_run(engine, flipped_id)
    assert primary is not None and primary.budget_usd == Decimal("1.00")
    # Shadow runs are not in the user's run list; the verdicts and the report are.
    listed = [r["run_id"] for r in (await api.get("/runs")).json()["items"]]
    assert flipped_id in listed and shadow_id not in listed
    alerts = (await api.get("/divergences", params={"version": ids["flip"]})).json()
    assert [(d["agent"], d["run_id"]) for d in alerts] == [("finalizer", flipped_id)]
    report = (await api.get(f"/versions/{ids['flip']}/report")).json()
    assert report["shadow_runs"] == 1 and report["compared_runs"] == 1
    assert report["per_agent"]["finalizer"]["alerts"] == 1
    worst = report["per_agent"]["finalizer"]["worst"][0]
    assert worst["primary_output"] == ANSWERS["v1"] + NO_CHECKS
    assert worst["shadow_output"] == ANSWERS["flip"] + NO_CHECKS
    assert Decimal(report["candidate_spend_usd"]) > 0 and report["intents_differ"] == []


async def test_a_broken_candidate_never_touches_the_primary(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    v1 = snapshot(settings, engine, checkout(tmp_path / "v1", "Be clear."))
    v2 = snapshot(settings, engine, checkout(tmp_path / "v2", "MARKER-flip"))
    # The candidate's LLM calls hang (its runs are the ones whose ids end in -shadow).
    fake_groq.hang_when = lambda body: (
        30.0 if str(body.get("user", "")).endswith("-shadow") else None
    )
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn("worker", "--version", v1)
        candidate = workers.spawn("worker", "--version", v2)
        await wait_live(client, settings, v1, v2)
        assert (await api.post(f"/versions/{v1}/activate", json={})).status_code == 200
        baseline_start = time.monotonic()
        baseline = await start_run(api)
        await assert_eventually(completed(engine, baseline), timeout=60)
        baseline_s = time.monotonic() - baseline_start
        assert (await api.post(f"/versions/{v2}/shadow", json={"rate": 1.0})).status_code == 200

        hung_start = time.monotonic()
        with_hung_shadow = await start_run(api)
        await assert_eventually(completed(engine, with_hung_shadow), timeout=60)
        hung_s = time.monotonic() - hung_start
        shadow_of_hung = shadow.shadow_run_of(engine, with_hung_shadow)
        assert shadow_of_hung is not None and shadow_of_hung.status == "RUNNING"

        candidate.send_signal(signal.SIGKILL)  # the candidate's worker dies
        await asyncio.to_thread(candidate.wait, 30)
        dead_start = time.monotonic()
        with_dead_shadow = await start_run(api)
        await assert_eventually(completed(engine, with_dead_shadow), timeout=60)
        dead_s = time.monotonic() - dead_start
    print(f"primary wall time: no shadow {baseline_s:.2f}s, hung shadow {hung_s:.2f}s, "
          f"dead candidate {dead_s:.2f}s")  # fmt: skip
    for run_id in (baseline, with_hung_shadow, with_dead_shadow):
        run = (await api.get(f"/runs/{run_id}")).json()
        assert (
            run["status"] == "COMPLETED"
            and run["final_answer"] == "FINAL-ANSWER: run python snake.py" + NO_CHECKS
        )
    shadow_of_dead = shadow.shadow_run_of(engine, with_dead_shadow)
    assert shadow_of_dead is not None and steps_of(engine, shadow_of_dead.run_id) == []


def test_sampling_is_deterministic_and_close_to_the_rate() -> None:
    # Seeded ids: the test is the same on every run. The bound is four binomial
    # standard deviations (0.3: ±0.018, 0.05: ±0.009), so any id set would pass
    # a fair hash by chance with p < 1e-4, and a biased one fails.
    rng = random.Random(20261130)
    ids = [f"run-{rng.getrandbits(64):016x}" for _ in range(10_000)]
    for rate in (0.05, 0.3):
        picked = [shadow.sampled(run_id, "salt", rate) for run_id in ids]
        bound = 4 * math.sqrt(rate * (1 - rate) / len(ids))
        assert abs(sum(picked) / len(ids) - rate) <= bound, (rate, sum(picked))
        assert picked == [shadow.sampled(run_id, "salt", rate) for run_id in ids]
    assert not any(shadow.sampled(run_id, "salt", 0.0) for run_id in ids[:100])
    assert all(shadow.sampled(run_id, "salt", 1.0) for run_id in ids[:100])


def test_the_daily_cap_pauses_sampling_and_says_so(settings: Settings, engine: Any) -> None:
    shadow.set_config(engine, "snap-aaaaaaaaaaaa", 1.0, None)
    capped = settings.model_copy(update={"shadow_daily_cap_usd": Decimal("0.01")})
    assert shadow.decide(engine, capped, "run-x").shadow
    with session_scope(engine) as session:
        session.add(
            LedgerEntry(
                run_id="run-x-shadow", workflow_id="run-x-shadow", activity_id="1", attempt=1,
                agent="planner", provider="groq", model="m", prompt_tokens=1, completion_tokens=1,
                cost_pusd=10**10, price_source="test", usage_source="reported", shadow=True,
                created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    decision = shadow.decide(engine, capped, "run-y")
    assert not decision.shadow and decision.why_not is not None
    assert "sampling paused" in decision.why_not and "SHADOW_DAILY_CAP_USD" in decision.why_not
    assert shadow.decide(engine, settings, "run-y").shadow  # a bigger cap: sampling again


async def test_calibrate_reports_the_noise_floor_of_the_active_version(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    api: httpx.AsyncClient,
    api_url: str,
    tmp_path: Path,
) -> None:
    v1 = snapshot(settings, engine, checkout(tmp_path / "v1", "Be clear."))
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn("worker", "--version", v1)
        await wait_live(client, settings, v1)
        assert (await api.post(f"/versions/{v1}/activate", json={})).status_code == 200
        for _ in range(2):
            run_id = await start_run(api)
            await assert_eventually(completed(engine, run_id), timeout=60)
        done = await run_cli(
            "shadow", "calibrate", "--runs", "2", "--wait", "90", api_url=api_url, cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    # The fake answers the same prompt the same way: two comparisons per agent, no noise.
    for agent in ("researcher", "planner", "executor", "coder", "finalizer"):
        assert lines[agent][1:3] == ["2", "none"], done.stdout
    assert f"re-running 2 run(s) on {v1}" in done.stdout
    rows = shadow.divergences(engine, version=v1, limit=100)
    assert len(rows) == 12 and {r.active_version for r in rows} == {v1}  # 6 rows per rerun


# ---- the walk-through: 20 shadowed runs of independent generations ---------------------------

OPENERS = [
    "{pick} is the right choice for this app.",
    "Go with {pick}.",
    "My recommendation: {pick}.",
    "For your team, {pick} fits best.",
    "Pick {pick} for the mobile app.",
    "I would build it with {pick}.",
    "{pick} suits this project best.",
    "The framework to use here is {pick}.",
]
# Each point in three wordings, and an answer sometimes ends with a closing line: a model does
# not repeat its sentences verbatim. (With two wordings and no closing line, about 1 pair in
# 2,500 was the other answer with one bullet cut, every other line verbatim — an edit, which the
# detector rightly reads as a dropped step.)
REASONS = {
    "React Native": [
        ("Your developers already write JavaScript, so there is little to learn.",
         "The team knows JavaScript already, which keeps the learning curve flat.",
         "Existing JavaScript skills carry straight over."),
        ("One codebase ships to both iOS and Android.",
         "A single codebase covers iOS and Android alike.",
         "You maintain one app for both platforms."),
        ("Expo makes the first builds and over-the-air updates simple.",
         "With Expo, early builds and OTA updates take minutes.",
         "Expo handles builds and pushes updates without a store release."),
        ("The ecosystem of libraries is large and mature.",
         "There is a big, mature library ecosystem to draw on.",
         "Most features you need already exist as well-kept packages."),
    ],
    "Flutter": [
        ("Dart is quick to learn and the widgets render the same on every device.",
         "Dart is easy to pick up, and widgets look identical on every device.",
         "Its widgets draw every pixel themselves, so screens match across devices."),
        ("One codebase ships to both iOS and Android.",
         "A single codebase covers iOS and Android alike.",
         "You maintain one app for both platforms."),
        ("Hot reload keeps the design loop short.",
         "Hot reload makes design iterations fast.",
         "Changes show up on the device in about a second while you work."),
        ("Google maintains it and the tooling is solid.",
         "It is backed by Google, with solid tooling.",
         "The SDK, debugger and profiler come from one well-funded team."),
    ],
}  # fmt: skip
CLOSINGS = [
    "",
    "Happy to sketch the first screens next.",
    "Start with a small prototype to confirm it.",
    "Revisit the choice if the team changes.",
]


def resampling_model(agent: str, body: dict[str, Any]) -> str | None:
    """A prompt-sensitive fake that never writes the same answer twice: the Finalizer picks its
    framework by its version's prompt (MARKER-flip → Flutter) and words it afresh every call;
    the judge reads which framework each answer recommends."""
    if agent == "judge":
        return judge_by(lambda x, y: ("Flutter" in x) != ("Flutter" in y))(agent, body)
    if agent != "finalizer":
        return None
    system = body["messages"][0]["content"]
    pick = "Flutter" if "MARKER-flip" in system else "React Native"
    rng = random.Random()  # unseeded: every answer is another generation
    reasons = [rng.choice(r) for r in rng.sample(REASONS[pick], k=rng.randint(2, 4))]
    tail = "\n".join(f"- {r}" for r in reasons) if rng.random() < 0.5 else " ".join(reasons)
    closing = rng.choice(CLOSINGS)
    answer = rng.choice(OPENERS).format(pick=pick) + "\n\n" + tail
    return answer + "\n\n" + closing if closing else answer


async def test_walkthrough_rewording_stays_quiet_a_flip_alerts(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    fake_groq.responder = resampling_model
    ids = three_versions(settings, engine, tmp_path)
    with WorkerProcesses(settings, tmp_path) as workers:
        await serve_and_activate_v1(workers, client, settings, api, ids)
        assert (
            await api.post(f"/versions/{ids['reword']}/shadow", json={"rate": 1.0})
        ).status_code == 200
        reworded = [await start_run(api) for _ in range(20)]
        finals = set()
        for run_id in reworded:
            found = await wait_compared(api, run_id)
            alerts = [
                (d["agent"], d["reasons"]) for d in found["shadow"]["divergences"] if d["alert"]
            ]
            assert not alerts, alerts
            shadow_run = (await api.get(f"/runs/{found['shadow']['run_id']}")).json()
            finals |= {found["final_answer"], shadow_run["final_answer"]}
        assert len(finals) >= 20  # independent generations, not one canned answer

        assert (
            await api.post(f"/versions/{ids['flip']}/shadow", json={"rate": 1.0})
        ).status_code == 200
        flipped = [await start_run(api) for _ in range(3)]
        for run_id in flipped:
            found = await wait_compared(api, run_id)
            verdicts = {d["agent"]: d for d in found["shadow"]["divergences"]}
            assert verdicts["finalizer"]["alert"], verdicts["finalizer"]
            # The judge reads the decision; when both happen to open the same way ("Go with
            # Flutter." / "Go with React Native."), layer 2 sees the swapped name first.
            assert verdicts["finalizer"]["findings"][0]["layer"] in ("judge", "structure")
    report = (await api.get(f"/versions/{ids['reword']}/report")).json()
    assert report["compared_runs"] == 20
    assert all(a["alerts"] == 0 for a in report["per_agent"].values()), report["per_agent"]
    alerts = (await api.get("/divergences", params={"version": ids["flip"]})).json()
    assert {(d["agent"], d["status"]) for d in alerts} == {("finalizer", "alert")}
    assert len(alerts) == 3
    # The judge's calls are shadow spend, ledgered against the shadow runs.
    judged = [c for r in reworded for c in calls_of(engine, f"{r}-shadow") if c.agent == "judge"]
    assert judged and all(c.shadow for c in judged)
