"""`crewline up` as a user runs it: start, run, Ctrl-C, no orphans, and a later `up` resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from crewline.db import make_engine
from records.runs import get_run
from tests.conftest import assert_eventually, free_port

BIN = Path(sys.executable).parent


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "LLM_", "CREWLINE_"))}
    env.update(
        CREWLINE_DATA_DIR=str(tmp_path / "data"),
        TEMPORAL_PORT=str(free_port()),
        TEMPORAL_UI_PORT=str(free_port()),
        API_PORT=str(free_port()),
        SEARCH_BACKEND="none",
        **extra,
    )
    env["CREWLINE_API_URL"] = f"http://127.0.0.1:{env['API_PORT']}"
    return env


def _up(env: dict[str, str], tmp_path: Path, log: str, *args: str) -> subprocess.Popen[bytes]:
    with (tmp_path / log).open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "crewline"), "up", *args],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _get(tmp_path: Path, url: str) -> httpx.Response:
    """A GET with the admin key `crewline up` wrote to the data directory."""
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"})


async def _wait_up(tmp_path: Path, log: str) -> None:
    await assert_eventually(lambda: "crewline is up" in (tmp_path / log).read_text(), timeout=60)


def test_up_without_provider_fails_at_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "crewline"), "up"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GROQ_API_KEY" in result.stderr and "LLM_PROVIDER=scripted" in result.stderr
    assert not (tmp_path / "data" / "temporal.db").exists()  # nothing was started


async def test_ctrl_c_stops_cleanly_and_next_up_resumes_the_run(tmp_path: Path) -> None:
    env = _env(tmp_path, LLM_PROVIDER="scripted", SCRIPTED_DELAY_S="1.5")
    stack = _up(env, tmp_path, "up1.log")
    try:
        await _wait_up(tmp_path, "up1.log")
        children = _children_of(stack.pid)
        assert children, "the dev server runs as a child of `crewline up`"
        run = subprocess.run(
            [str(BIN / "crewline"), "run", "--no-wait", "Build a snake game"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        run_id = run.stdout.strip()
        api = env["CREWLINE_API_URL"]
        # No key was configured: `up` made an admin key, readable by this user only, and the
        # CLI on this machine used it.
        key_file = tmp_path / "data" / "admin.key"
        assert run.returncode == 0, run.stderr
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{api}/runs/{run_id}").status_code == 401

        def planner_started() -> bool:
            steps = _get(tmp_path, f"{api}/runs/{run_id}").json()["steps"]
            return len(steps) >= 2

        await assert_eventually(planner_started, timeout=30)
        stack.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(stack.wait, 60) == 0
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "orphaned dev server"
    finally:
        if stack.poll() is None:
            stack.kill()
    # Stopped mid-run: the run is unfinished, and only Temporal's file remembers where it was.
    left = get_run(make_engine(f"sqlite:///{tmp_path / 'data' / 'crewline.db'}"), run_id)
    assert left is not None and left.status == "RUNNING"
    # The second time with two worker processes for the active version.
    stack = _up(env, tmp_path, "up2.log", "--workers", "2")
    try:
        await _wait_up(tmp_path, "up2.log")

        def completed() -> bool:
            return _get(tmp_path, f"{api}/runs/{run_id}").json()["status"] == "COMPLETED"

        await assert_eventually(completed, timeout=60)
        run_body = _get(tmp_path, f"{api}/runs/{run_id}").json()
        assert [s["status"] for s in run_body["steps"]] == ["COMPLETED"] * 5
        assert "scripted offline provider" in run_body["final_answer"]
        # The first `up` snapshotted the working tree and activated it; the run, started on it,
        # finished on it after the restart.
        versions = _get(tmp_path, f"{api}/versions").json()
        active = versions["active"]
        assert [v["id"] for v in versions["items"]] == [active] and active.startswith("snap-")

        def two_workers() -> bool:
            return _get(tmp_path, f"{api}/versions").json()["items"][0]["live_workers"] == 2

        await assert_eventually(two_workers, timeout=30)
        assert run_body["version"] == active and {s["version"] for s in run_body["steps"]} == {
            active
        }
        assert (tmp_path / "data" / "snapshots" / f"{active}.zip").is_file()
        history = _get(tmp_path, f"{api}/versions/history").json()["items"]
        assert [(h["action"], h["to_version"]) for h in history] == [("bootstrap", active)]
        # The restart kept the key: one bootstrap admin key, the same file.
        assert "created admin key" not in (tmp_path / "up2.log").read_text()
    finally:
        stack.send_signal(signal.SIGINT)
        await asyncio.to_thread(stack.wait, 60)
