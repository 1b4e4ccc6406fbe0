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
from tests.fakes import NO_CHECKS, FakeGroq
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


async def test_shadow_flags_a_decision_flip_and_not_a_rewording(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    fake_groq.responder = by_prompt
    roots = {
        name: checkout(tmp_path / name, line)
        for name, line in (
            ("v1", "Be clear."),
            ("flip", "MARKER-flip"),
            ("reword", "MARKER-reword"),
        )
    }
    ids = {name: snapshot(settings, engine, root) for name, root in roots.items()}
    with WorkerProcesses(settings, tmp_path) as workers:
        for name in ids:
            workers.spawn("worker", "--version", ids[name])
        await wait_live(client, settings, *ids.values())
        assert (await api.post(f"/versions/{ids['v1']}/activate", json={})).status_code == 200
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
    # The fake answers the same prompt the same way: no noise, nothing near a threshold.
    for agent in ("researcher", "planner", "executor", "coder", "finalizer"):
        assert lines[agent][1:4] == ["2", "1.00", "1.00"], done.stdout
    assert f"re-running 2 run(s) on {v1}" in done.stdout
