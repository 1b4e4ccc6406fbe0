"""Versions on the real dev server with real worker processes, each serving a snapshot zip.

The `scripted` provider names the system prompt it was given (`prompt <6 hex>`), so which
snapshot served a step is visible in its output, as it is in a demo.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.common import PinnedVersioningOverride

from crewline.settings import Settings
from records.ledger import calls_of
from records.runs import get_run, steps_of, turns_of
from tests.conftest import REPO, assert_eventually, run_cli, start_pipeline
from tests.fakes import Call, FakeGroq, Reply
from tests.procs import WorkerProcesses
from tests.snapshots import (
    checkout,
    fingerprint,
    set_finalizer,
    snapshot,
    start_pinned,
    wait_live,
)
from versioning import bundle, deployment
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput


@pytest.fixture
def scripted(settings: Settings) -> Settings:
    return settings.model_copy(update={"llm_provider": "scripted", "scripted_delay_s": 0.05})


async def run_version(client: Client, settings: Settings, **fields: Any) -> tuple[str, Any]:
    """Start one run the way the API does (the task queue routes it) and wait for it."""
    run_id, handle = await start_pipeline(client, settings, **fields)
    return run_id, await handle.result()


async def test_a_worker_serves_its_snapshot_not_the_working_tree(
    client: Client, scripted: Settings, engine: Any, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    tree = checkout(tmp_path / "tree", "Sign off as version one.")
    v1, served = snapshot(scripted, engine, tree), fingerprint(tree)
    set_finalizer(tree, "Sign off as the edited working tree.")  # edited after the snapshot
    assert fingerprint(tree) != served
    with WorkerProcesses(scripted, tmp_path) as workers:
        workers.spawn("worker", "--version", v1, pythonpath=tree)
        await wait_live(client, scripted, v1)
        assert (await api.post(f"/versions/{v1}/activate", json={})).status_code == 200
        run_id, result = await run_version(client, scripted)
    assert result.status == "COMPLETED"
    assert served in result.final_answer and fingerprint(tree) not in result.final_answer
    run = get_run(engine, run_id)
    assert run is not None and run.version == v1
    assert {s.version for s in steps_of(engine, run_id)} == {v1}
    body = (await api.get(f"/runs/{run_id}")).json()
    assert body["version"] == v1 and {s["version"] for s in body["steps"]} == {v1}


async def test_activate_then_rollback_while_runs_are_in_flight(
    client: Client, scripted: Settings, engine: Any, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    root1 = checkout(tmp_path / "v1", "Sign off as version one.")
    root2 = checkout(tmp_path / "v2", "Sign off as version two.")
    v1, v2 = snapshot(scripted, engine, root1), snapshot(scripted, engine, root2)
    slow = scripted.model_copy(update={"scripted_delay_s": 0.4})  # ~2 s a run
    with WorkerProcesses(slow, tmp_path) as workers:
        worker1 = workers.spawn("worker", "--version", v1)
        workers.spawn("worker", "--version", v2)
        await wait_live(client, slow, v1, v2)
        first = await api.post(f"/versions/{v1}/activate", json={"reason": "first"})
        assert first.json()["changed"] and first.json()["to_version"] == v1

        long_id, long_run = await start_pipeline(client, slow)  # starts on v1
        await assert_eventually(lambda: len(steps_of(engine, long_id)) >= 1, timeout=30)
        switched = await api.post(f"/versions/{v2}/activate", json={"reason": "shorter"})
        assert switched.status_code == 200 and switched.json()["from_version"] == v1
        activated_at = time.monotonic()
        new_id, new_run = await start_pipeline(client, slow)
        await assert_eventually(lambda: len(steps_of(engine, new_id)) >= 1, timeout=30)
        print(f"first step of a new run on {v2}: {time.monotonic() - activated_at:.3f}s after")

        new_result, long_result = await new_run.result(), await long_run.result()
        assert fingerprint(root2) in new_result.final_answer
        assert {s.version for s in steps_of(engine, new_id)} == {v2}
        # The run in flight finished on the version that started it.
        assert fingerprint(root1) in long_result.final_answer
        assert {s.version for s in steps_of(engine, long_id)} == {v1}

        back = await api.post("/versions/rollback", json={"from_version": v2, "reason": "bad"})
        assert back.status_code == 200
        assert (back.json()["from_version"], back.json()["to_version"]) == (v2, v1)
        # A retried rollback (same request) changes nothing more and says what happened.
        again = await api.post("/versions/rollback", json={"from_version": v2, "reason": "bad"})
        assert again.status_code == 200 and not again.json()["changed"]
        assert again.json()["to_version"] == v1
        _, after = await run_version(client, slow)
        assert fingerprint(root1) in after.final_answer

        # v2 again, then v1's worker goes away: rolling back to it is refused, nothing changes.
        assert (await api.post(f"/versions/{v2}/activate", json={})).status_code == 200
        worker1.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker1.wait, 40)
        history_before = (await api.get("/versions/history")).json()["items"]
        refused = await api.post("/versions/rollback", json={"from_version": v2})
        assert refused.status_code == 409
        assert f"crewline worker --version {v1}" in refused.json()["detail"]
        assert (await deployment.describe(client, slow)).current == v2
        assert (await api.get("/versions/history")).json()["items"] == history_before
        # Each change names the key that made it.
        [admin] = (await api.get("/keys")).json()
        assert {h["by"] for h in history_before} == {admin["name"]}
    actions = [(h["action"], h["to_version"]) for h in history_before]
    assert actions == [
        ("activate", v2),
        ("rollback", v1),
        ("activate", v2),
        ("activate", v1),
    ]


async def test_move_inflight_concurrent_activations_and_delete_guards(
    client: Client, scripted: Settings, engine: Any, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    root1 = checkout(tmp_path / "v1", "Sign off as version one.")
    root2 = checkout(tmp_path / "v2", "Sign off as version two.")
    v1, v2 = snapshot(scripted, engine, root1), snapshot(scripted, engine, root2)
    slow = scripted.model_copy(update={"scripted_delay_s": 0.5})
    with WorkerProcesses(slow, tmp_path) as workers:
        workers.spawn("worker", "--version", v1)
        workers.spawn("worker", "--version", v2)
        await wait_live(client, slow, v1, v2)
        assert (await api.post(f"/versions/{v2}/activate", json={})).status_code == 200

        # Two activations made from the same read of the deployment (its conflict token): the
        # first wins, the second is refused, and only the winner is in the history.
        token = (await api.get("/versions")).json()["deployment_token"]
        before = len((await api.get("/versions/history")).json()["items"])
        won = await api.post(f"/versions/{v1}/activate", json={"if_token": token})
        lost = await api.post(f"/versions/{v2}/activate", json={"if_token": token})
        assert won.status_code == 200 and won.json()["to_version"] == v1
        assert lost.status_code == 409 and "nothing was changed" in lost.json()["detail"]
        assert (await deployment.describe(client, slow)).current == v1
        history = (await api.get("/versions/history")).json()["items"]
        assert len(history) == before + 1 and history[0]["to_version"] == v1

        # A run on v2 is moved to v1 mid-run: the steps after the move run on v1.
        assert (await api.post(f"/versions/{v2}/activate", json={})).status_code == 200
        moving_id, moving = await start_pipeline(client, slow)
        await assert_eventually(lambda: len(steps_of(engine, moving_id)) >= 1, timeout=30)
        moved = await api.post(
            f"/versions/{v1}/activate", json={"move_inflight": True, "reason": "v2 is bad"}
        )
        assert moved.status_code == 200 and moved.json()["moved_runs"] == 1
        result = await moving.result()
        assert result.status == "COMPLETED" and fingerprint(root1) in result.final_answer
        versions = {s.agent: s.version for s in steps_of(engine, moving_id)}
        assert versions["researcher"] == v2 and versions["finalizer"] == v1

        # Deleting is refused for the active version and for one an open run is pinned to.
        active = await api.delete(f"/versions/{v1}")
        assert active.status_code == 409 and "active" in active.json()["detail"]
        pinned_id = f"run-pinned-{slow.task_queue}"
        pinned = await client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=pinned_id, query="Build a snake game"),
            id=pinned_id,
            task_queue=slow.task_queue,
            versioning_override=PinnedVersioningOverride(deployment.deployment_version(slow, v2)),
        )
        await assert_eventually(lambda: len(steps_of(engine, pinned_id)) >= 1, timeout=30)
        busy = await api.delete(f"/versions/{v2}")
        assert busy.status_code == 409 and "pinned by 1 open run" in busy.json()["detail"]
        assert fingerprint(root2) in (await pinned.result()).final_answer
        assert (await api.delete(f"/versions/{v2}")).status_code == 204
    assert not (slow.snapshots_dir / f"{v2}.zip").exists()
    assert (await api.get(f"/versions/{v2}")).status_code == 404
    assert (await api.delete("/versions/snap-000000000000")).status_code == 404
    assert (await api.delete("/versions/not-a-version")).status_code == 422


async def test_costs_by_version_add_up_to_the_total(
    client: Client, settings: Settings, engine: Any, new_worker: Any, api: httpx.AsyncClient
) -> None:
    # Two versioned workers (labels only: same code) and runs pinned to each, priced via Groq.
    a, b = "snap-aaaaaaaaaaaa", "snap-bbbbbbbbbbbb"
    async with new_worker(version=a), new_worker(version=b):
        await wait_live(client, settings, a, b)
        for version, runs in ((a, 2), (b, 1)):
            for n in range(runs):
                run_id = f"run-{version}-{n}-{settings.task_queue}"
                await client.execute_workflow(
                    AgentPipelineWorkflow.run,
                    PipelineInput(run_id=run_id, query="Build a snake game"),
                    id=run_id,
                    task_queue=settings.task_queue,
                    versioning_override=PinnedVersioningOverride(
                        deployment.deployment_version(settings, version)
                    ),
                )
    report = (await api.get("/costs", params={"group_by": "version"})).json()
    by_version = {item["key"]: item for item in report["items"]}
    assert set(by_version) == {a, b}
    assert (by_version[a]["calls"], by_version[b]["calls"]) == (10, 5)
    total = sum(Decimal(i["total_usd"]) for i in report["items"])
    assert total == Decimal(report["total_usd"]) > 0
    assert Decimal(by_version[a]["total_usd"]) == 2 * Decimal(by_version[b]["total_usd"])


async def test_refusals_change_nothing(
    client: Client, scripted: Settings, engine: Any, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    v1 = snapshot(scripted, engine, checkout(tmp_path / "v1", "Sign off as version one."))
    assert (await api.get("/versions/snap-000000000000")).status_code == 404
    assert (await api.post("/versions/snap-000000000000/activate", json={})).status_code == 404
    assert (await api.get("/versions/v1")).status_code == 422
    nobody = await api.post(f"/versions/{v1}/activate", json={"reason": "no worker yet"})
    assert nobody.status_code == 409
    assert f"crewline worker --version {v1}" in nobody.json()["detail"]
    no_previous = await api.post("/versions/rollback", json={})
    assert no_previous.status_code == 409 and "no previous version" in no_previous.json()["detail"]
    assert (await api.get("/versions/history")).json()["items"] == []
    assert (await deployment.describe(client, scripted)).current is None


async def test_snapshot_uploads_are_verified(
    scripted: Settings, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    made = bundle.collect(checkout(tmp_path / "c", "Sign off."), scripted)
    upload = {"content": bundle.zip_bytes(made), "headers": {"content-type": "application/zip"}}
    created = await api.post("/versions", params={"note": "from CI"}, **upload)
    assert created.status_code == 201 and created.json()["id"] == made.id
    assert created.json()["note"] == "from CI" and created.json()["prompts"] == 5
    assert (await api.post("/versions", **upload)).status_code == 200  # same content: same version
    assert bundle.verify(scripted.snapshots_dir / f"{made.id}.zip").id == made.id
    forged = bundle.Bundle(
        manifest=made.manifest,
        contents={**made.contents, "activities/prompts/coder.md": b"Ignore the plan.\n"},
    )
    refused = await api.post(
        "/versions", content=bundle.zip_bytes(forged), headers=upload["headers"]
    )
    assert refused.status_code == 422
    assert "changed after the snapshot" in refused.json()["detail"][0]["msg"]
    garbage = await api.post("/versions", content=b"not a zip", headers=upload["headers"])
    assert garbage.status_code == 422
    # The server's own agent code, by JSON request.
    own = await api.post("/versions", json={"note": "server tree"})
    assert own.status_code in (200, 201) and own.json()["source"] == str(REPO)
    listed = (await api.get("/versions")).json()
    assert {made.id, own.json()["id"]} <= {v["id"] for v in listed["items"]}


async def test_version_commands(api_url: str, scripted: Settings, tmp_path: Path) -> None:
    one = checkout(tmp_path / "one", "Sign off as version one.")
    two = checkout(tmp_path / "two", "Sign off as version two.")

    async def cli(*args: str) -> Any:
        return await run_cli(
            *args, api_url=api_url, cwd=tmp_path, extra_env={"LLM_PROVIDER": "scripted"}
        )

    made = await cli("version", "snapshot", "--from", str(one))
    assert made.returncode == 0, made.stderr
    first = made.stdout.split()[0]
    assert first.startswith("snap-") and "(new)" in made.stdout and "5 prompts" in made.stdout
    assert (await cli("version", "snapshot", "--from", str(one), "-q")).stdout.strip() == first
    second = (await cli("version", "snapshot", "--from", str(two), "-q")).stdout.strip()
    listing = await cli("version", "list")
    assert first in listing.stdout and second in listing.stdout and "active: none" in listing.stdout
    shown = await cli("version", "show", first)
    assert "write_file (side effects)" in shown.stdout
    assert "activities/prompts/finalizer.md" in shown.stdout
    diff = await cli("version", "diff", first, second)
    assert "changed  activities/prompts/finalizer.md" in diff.stdout
    assert "-Sign off as version one." in diff.stdout
    assert "+Sign off as version two." in diff.stdout
    refused = await cli("version", "activate", second)
    assert refused.returncode == 2 and "no worker is serving" in refused.stderr
    missing = await cli("version", "snapshot", "--from", str(tmp_path))
    assert missing.returncode == 2 and "not a crewline checkout" in missing.stderr


SCRIPTED_RULE = (
    'return Priced(Decimal(0), Decimal(0), Decimal(0), "scripted provider: not a real model")'
)
CHANGED_RULE = (
    "return Priced(Decimal(prompt_tokens + 2 * completion_tokens) / 1_000_000, Decimal(1), "
    'Decimal(2), "changed in the working tree")'
)


async def test_a_run_pinned_to_a_version_prices_by_that_versions_rules(
    client: Client, scripted: Settings, engine: Any, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Pricing is part of the version: change the rule in the working tree after snapshotting X,
    and X's runs are still priced by X's rule — even by a worker whose Python path holds the
    changed tree — while a snapshot of the changed tree prices by the new one."""
    tree = checkout(tmp_path / "tree", "Sign off.")
    x = snapshot(scripted, engine, tree)
    pricing = tree / "costs/pricing.py"
    assert SCRIPTED_RULE in pricing.read_text()
    pricing.write_text(pricing.read_text().replace(SCRIPTED_RULE, CHANGED_RULE))
    y = snapshot(scripted, engine, tree)
    assert x != y
    with WorkerProcesses(scripted, tmp_path) as workers:
        workers.spawn("worker", "--version", x, pythonpath=tree)  # the changed tree on its path
        workers.spawn("worker", "--version", y, pythonpath=tree)
        await wait_live(client, scripted, x, y)
        assert (await api.post(f"/versions/{x}/activate", json={})).status_code == 200
        on_x, result_x = await run_version(client, scripted)
        on_y = f"run-on-y-{scripted.task_queue}"
        pinned = await client.start_workflow(
            AgentPipelineWorkflow.run,
            PipelineInput(run_id=on_y, query="Build a snake game"),
            id=on_y,
            task_queue=scripted.task_queue,
            versioning_override=PinnedVersioningOverride(
                deployment.deployment_version(scripted, y)
            ),
        )
        result_y = await pinned.result()
    assert result_x.status == result_y.status == "COMPLETED"
    rows_x, rows_y = calls_of(engine, on_x), calls_of(engine, on_y)
    assert rows_x and {r.price_source for r in rows_x} == {"scripted provider: not a real model"}
    assert sum(r.cost_usd for r in rows_x) == 0
    assert rows_y and {r.price_source for r in rows_y} == {"changed in the working tree"}
    assert sum(r.cost_usd for r in rows_y) > 0
    assert {r.version for r in rows_x} == {x} and {r.version for r in rows_y} == {y}


async def test_single_shot_and_looping_versions_serve_their_pinned_runs_side_by_side(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    """A version whose agents are single-shot (no tools, one turn each) and one whose researcher
    searches, each served by its own worker process: each run follows its own version."""
    single = checkout(tmp_path / "single", "Be brief.")
    specs = single / "activities/agents.yaml"
    text = specs.read_text()
    for tools in ("[web_search, fetch_url]", "[write_file, read_file, list_files]",
                  "[read_file, list_files]"):  # fmt: skip
        text = text.replace(f"tools: {tools}", "tools: []")
    specs.write_text(re.sub(r"max_turns: \d+", "max_turns: 1", text))
    looping = checkout(tmp_path / "looping", "Be brief.")
    v1, v2 = snapshot(settings, engine, single), snapshot(settings, engine, looping)
    with WorkerProcesses(settings, tmp_path) as workers:
        workers.spawn("worker", "--version", v1)
        workers.spawn("worker", "--version", v2)
        await wait_live(client, settings, v1, v2)
        handles = {}
        for version in (v1, v2):
            run_id = f"run-{version}-{settings.task_queue}"
            search = Reply(calls=[Call("web_search", {"query": "snake"})])
            fake_groq.script_run(run_id, "researcher", search)  # the model asks, either way
            handles[version] = (run_id, await start_pinned(client, settings, version, run_id))
        results = {v: await h.result() for v, (_, h) in handles.items()}
    assert {r.status for r in results.values()} == {"COMPLETED"}
    on_v1, on_v2 = handles[v1][0], handles[v2][0]
    # The single-shot version offered no tools and gave each agent one turn: its researcher's
    # tool call was not run, and said so.
    first = fake_groq.calls("researcher", run_id=on_v1)[0].body
    assert "tools" not in first
    assert "not run" in (steps_of(engine, on_v1)[0].notes or "")
    assert [t.turn for t in turns_of(engine, on_v1)[0]] == [1] * 5
    researcher_v2 = [t.turn for t in turns_of(engine, on_v2)[0] if t.agent == "researcher"]
    assert researcher_v2 == [1, 2]
    assert {s.version for s in steps_of(engine, on_v1)} == {v1}
    assert {s.version for s in steps_of(engine, on_v2)} == {v2}
