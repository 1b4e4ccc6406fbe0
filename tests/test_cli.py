"""The `crewline` command as a user runs it: a real process talking to a real API server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from temporalio.worker import Worker

from activities.tools.search import SearchHit
from crewline.settings import Settings
from tests.conftest import AUTH, run_cli
from tests.fakes import Call, FakeGroq, FakeSearch, Reply


async def test_run_follows_steps_and_prints_answer(
    api_url: str, new_worker: Callable[..., Worker], fake_groq: FakeGroq, tmp_path: Path
) -> None:
    fake_groq.script("researcher", Reply(calls=[Call("web_search", {"query": "snake rules"})]))
    hits = [SearchHit(title="Snake", url="https://example.org/snake", snippet="grid game")]
    async with new_worker(search_backend=FakeSearch(hits)):
        result = await run_cli("run", "Build a snake game", api_url=api_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        for agent in ("researcher", "planner", "executor", "coder", "finalizer"):
            assert f"✓ {agent}" in result.stdout
        # Each tool call as it finishes: what it did and how it went.
        assert "researcher ▸ web_search 'snake rules' → 1 results" in result.stdout
        assert "coder      ▸ write_file 'snake.py' → wrote snake.py (15 bytes)" in result.stdout
        assert "100→50 tokens" in result.stdout
        assert "FINAL-ANSWER: run python snake.py" in result.stdout
        assert "snake.py" in result.stdout and "run COMPLETED" in result.stdout

        no_wait = await run_cli(
            "run", "--no-wait", "Build a snake game", api_url=api_url, cwd=tmp_path
        )
        run_id = no_wait.stdout.strip()
        assert no_wait.returncode == 0 and run_id.startswith("run-")
        listing = await run_cli("runs", api_url=api_url, cwd=tmp_path)
        assert run_id in listing.stdout
        status = await run_cli("status", run_id, api_url=api_url, cwd=tmp_path)
        assert status.returncode == 0 and run_id in status.stdout
    assert "$0.000098" in result.stdout  # each turn: 100 + 50 tokens at Groq's price, $0.0000985
    # The spend the API, the dashboard and `crewline costs` show: six turns' worth.
    assert "spent $0.000591 of $1" in result.stdout
    table = await run_cli("costs", "--by", "agent", api_url=api_url, cwd=tmp_path)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["agent", "calls"]
    assert any(line.split()[:2] == ["planner", "2"] for line in lines)  # two runs
    assert lines[-1].split() == ["total", "0.001084"]  # 11 turns of 0.0000985
    assert "of which estimated" in lines[0] and "0.000000 (0 calls)" in lines[1]


async def test_failed_run_names_the_agent_and_exits_1(
    api_url: str, new_worker: Callable[..., Worker], fake_groq: FakeGroq, tmp_path: Path
) -> None:
    from tests.fakes import Status

    fake_groq.script("planner", Status(401, message="Invalid API Key"))
    async with new_worker():
        result = await run_cli("run", "Build a snake game", api_url=api_url, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "run FAILED at planner" in result.stderr and "GROQ_API_KEY rejected (401)" in result.stderr
    )


async def test_unreachable_api_says_how_to_start_it(tmp_path: Path) -> None:
    result = await run_cli("run", "x", api_url="http://127.0.0.1:1", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot reach the crewline API" in result.stderr and "make up" in result.stderr


async def test_unknown_run_and_bad_query_are_clear(api_url: str, tmp_path: Path) -> None:
    missing = await run_cli("status", "run-nope", api_url=api_url, cwd=tmp_path)
    assert missing.returncode == 2 and "not found (HTTP 404)" in missing.stderr
    empty = await run_cli("run", "  ", api_url=api_url, cwd=tmp_path)
    assert empty.returncode == 2 and "query must not be empty" in empty.stderr


async def test_costs_table_shows_what_was_estimated(
    api_url: str,
    new_worker: Callable[..., Worker],
    fake_groq: FakeGroq,
    settings: Settings,
    tmp_path: Path,
) -> None:
    from tests.fakes import Hang

    fake_groq.script("executor", Hang(3))  # cut off by the 1 s timeout: charged its worst case
    async with new_worker(settings=settings.model_copy(update={"llm_timeout_s": 1.0})):
        result = await run_cli("run", "Build a snake game", api_url=api_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    table = await run_cli("costs", "--by", "agent", api_url=api_url, cwd=tmp_path)
    executor = next(line for line in table.stdout.splitlines() if line.startswith("executor"))
    assert executor.split()[1] == "2" and executor.endswith("(1 calls)")
    assert "charged its worst case" in table.stdout.splitlines()[-1]
    async with httpx.AsyncClient(base_url=api_url, headers=AUTH) as http:
        [run] = (await http.get("/runs")).json()["items"]
        calls = (await http.get(f"/runs/{run['run_id']}/costs")).json()["calls"]
    cut = [
        (c["agent"], c["state"], c["cut_off_by"]) for c in calls if c["usage_source"] == "estimated"
    ]
    assert cut == [("executor", "settled", "timeout")]


async def test_artifacts_come_from_the_api_and_a_cancel_says_who_and_where(
    api_url: str, new_worker: Callable[..., Worker], fake_groq: FakeGroq, tmp_path: Path
) -> None:
    from tests.conftest import assert_eventually
    from tests.fakes import Hang

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with new_worker():
        done = await run_cli("run", "Build a snake game", api_url=api_url, cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.split("run ", 1)[1].split()[0]
        assert f"crewline artifacts {run_id} --download DIR" in done.stdout
        assert str(tmp_path) not in done.stdout  # no path guessed on the client
        fetched = await run_cli(
            "artifacts", run_id, "--download", str(tmp_path / "got"), api_url=api_url, cwd=elsewhere
        )
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "got" / "snake.py").read_text().strip() == "print('snake')"

        fake_groq.script("planner", Hang(20))
        started = await run_cli(
            "run", "--no-wait", "Build a snake game", api_url=api_url, cwd=elsewhere
        )
        stuck = started.stdout.strip()
        await assert_eventually(lambda: fake_groq.count("planner") == 2, timeout=30)
        assert (await run_cli("cancel", stuck, api_url=api_url, cwd=elsewhere)).returncode == 0

        async def cancelled() -> bool:
            shown = await run_cli("status", stuck, api_url=api_url, cwd=elsewhere)
            return "CANCELLED" in shown.stdout.splitlines()[0]

        await assert_eventually(cancelled, timeout=30, interval=0.5)
    shown = await run_cli("status", stuck, api_url=api_url, cwd=elsewhere)
    assert shown.returncode == 1
    assert "cancelled by admin-" in shown.stderr and "at step planner" in shown.stderr
