"""The sandbox: every escape attempt contained, with the limit named; and the Coder checking and
repairing its work through it, on the real dev server with a fake model."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from crewline.sandbox import Limits, Sandbox
from crewline.settings import Settings
from records.ledger import calls_of
from records.runs import checks_of, get_run, turns_of
from tests.conftest import assert_eventually, start_pipeline
from tests.fakes import Call, FakeGroq, Reply, tool_results
from tests.procs import WorkerProcesses

pytestmark = pytest.mark.skipif(
    not Sandbox().check().ok and not os.environ.get("CI"),
    reason="bubblewrap is not usable here (`.ci/run` installs it)",
)
LIMITS = Limits(wall_s=6, cpu_s=3, memory_mb=256, processes=32, output_bytes=64_000)
FILES = {"main.py": b"print('hello')\n"}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


@pytest.fixture
def secrets_on_host(tmp_path: Path) -> dict[str, Path]:
    """What must stay out of reach: a data directory with an admin key, an app database and
    another run's artifacts."""
    data = tmp_path / "data"
    (data / "artifacts" / "run-other").mkdir(parents=True)
    (data / "admin.key").write_text("crl_secret_admin_key\n")
    (data / "crewline.db").write_bytes(b"SQLite format 3\x00secret-rows")
    (data / "artifacts" / "run-other" / "private.py").write_text("SECRET = 1\n")
    return {"data": data, "key": data / "admin.key"}


async def test_no_network_not_even_loopback(sandbox: Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        connect = "python3 -c \"import socket; socket.create_connection(('{}', {}), timeout=2)\""
        local = await sandbox.run(connect.format("127.0.0.1", port), FILES)
        outside = await sandbox.run(connect.format("1.1.1.1", 80), FILES)
    finally:
        listener.close()
    assert local.exit_code == 1 and "Connection refused" in local.output
    assert outside.exit_code == 1 and "Network is unreachable" in outside.output


async def test_nothing_outside_the_workspace_copy_is_writable_or_readable(
    sandbox: Sandbox, secrets_on_host: dict[str, Path], tmp_path: Path
) -> None:
    data = secrets_on_host["data"]
    probe = (
        f"echo x > /usr/evil; echo x > {data}/evil; echo x > /evil; "
        f"cat {secrets_on_host['key']} {data}/crewline.db {data}/artifacts/run-other/private.py; "
        "cat /proc/1/environ; ls /root /work/main; echo in-copy > /work/mine && echo wrote-copy"
    )
    done = await sandbox.run(probe, FILES)
    assert "wrote-copy" in done.output  # the copy is writable...
    assert not (data / "evil").exists() and not Path("/usr/evil").exists()  # ...nothing else
    for secret in ("crl_secret_admin_key", "secret-rows", "SECRET = 1"):
        assert secret not in done.output
    assert "No such file or directory" in done.output  # the data directory is not even there


async def test_no_secret_in_its_environment(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk_worker_secret_123")
    monkeypatch.setenv("CREWLINE_ADMIN_KEY", "crl_admin_from_env_456")
    done = await sandbox.run("env; cat /proc/1/environ; cat /proc/self/environ", FILES)
    assert done.passed
    assert "gsk_worker_secret_123" not in done.output and "crl_admin" not in done.output
    assert "GROQ_API_KEY" not in done.output


async def test_limits_contain_bombs_and_name_themselves(sandbox: Sandbox) -> None:
    fork = await sandbox.run('python3 -c "import os\nwhile True: os.fork()"', FILES)
    assert fork.limit == "process limit"
    memory = await sandbox.run('python3 -c "x = bytearray(4 * 1024**3)"', FILES)
    assert memory.limit == "memory limit" and "MemoryError" in memory.output
    flood = await sandbox.run(
        "python3 -c \"import sys\nwhile True: sys.stdout.write('x' * 65536)\"", FILES
    )
    assert flood.limit == f"output limit: more than {LIMITS.output_bytes} bytes"
    assert len(flood.output) <= LIMITS.output_bytes + 1
    slow = await sandbox.run("sleep 60", FILES)
    assert slow.limit == "wall time limit: 6 s" and slow.duration_s < 9
    spin = await sandbox.run("python3 -c 'while True: pass'", FILES)
    assert spin.limit == "CPU time limit: 3 s"
    # The worker is unharmed: the next command runs as usual.
    assert (await sandbox.run("python3 main.py", FILES)).output == "hello\n"


async def test_nothing_is_left_running_after_it_returns(sandbox: Sandbox) -> None:
    marker = "crewline-sandbox-orphan-411"
    done = await sandbox.run(f"(sleep 30 && echo {marker}) & echo started", FILES)
    assert done.passed and done.output.strip() == "started"

    def leftover() -> list[str]:
        return [
            p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith("sleep 30")
        ]

    # The kernel kills the namespace's processes when its init exits; give it a moment to finish.
    await assert_eventually(lambda: not leftover(), timeout=3, interval=0.05)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def test_without_bubblewrap_nothing_runs_and_it_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crewline import sandbox as module

    module._check.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    try:
        refused = await Sandbox(LIMITS).run("touch /tmp/ran-unsandboxed", {})
    finally:
        module._check.cache_clear()
    assert refused.exit_code is None and not Path("/tmp/ran-unsandboxed").exists()
    assert refused.killed_by == (
        "sandbox unavailable: bubblewrap is not installed: install bubblewrap "
        "(Debian/Ubuntu: apt-get install bubblewrap)"
    )


# ---- the Coder checks and repairs its work -----------------------------------------------------
CHECKS = '```json\n["python -m py_compile main.py", "python main.py"]\n```'
BROKEN, FIXED = "print('snake'\n", "print('snake')\n"


def executor_gives_checks(fake: FakeGroq) -> None:
    fake.script("executor", Reply(text=f"No gaps. main.py runs the game.\n\n{CHECKS}"))


def coder_that_fixes_on_feedback(agent: str, body: dict[str, Any]) -> Reply | None:
    """Writes a file with a syntax error; once told a check failed, writes it right."""
    if agent != "coder":
        return None
    messages = body["messages"]
    told = any(m["role"] == "user" and "acceptance checks failed" in str(m["content"])
               for m in messages)  # fmt: skip
    wrote = tool_results(body)
    if not wrote or (told and messages[-1]["role"] == "user"):
        return Reply(
            calls=[Call("write_file", {"path": "main.py", "content": FIXED if told else BROKEN})]
        )
    return Reply(text="main.py is written.")


async def test_a_failing_check_is_repaired_in_the_next_round(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    executor_gives_checks(fake_groq)
    fake_groq.responder = coder_that_fixes_on_feedback
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings)
        result = await handle.result()
    assert result.status == "COMPLETED"
    record = checks_of(engine, run_id, "coder")
    assert record["status"] == "passed" and [r["round"] for r in record["rounds"]] == [1, 2]
    first, second = (r["results"] for r in record["rounds"])
    assert [r["passed"] for r in first] == [False, False] and first[0]["exit_code"] == 1
    assert "SyntaxError" in first[0]["output"]
    assert all(r["passed"] for r in second)
    # The Coder was told what failed, in its conversation, after its answer.
    told = [m["content"] for c in fake_groq.calls("coder") for m in c.body["messages"]
            if m["role"] == "user" and "acceptance checks failed" in str(m["content"])]  # fmt: skip
    assert told and "SyntaxError" in told[0] and "round 1 of 3" in told[0]
    # The Finalizer saw the checks' record, and the answer says what was verified.
    prompt = fake_groq.calls("finalizer")[0].body["messages"][1]["content"]
    assert "passed: 2 of 2 passed after 2 rounds in the sandbox" in prompt
    assert result.final_answer.endswith("Checks: passed — 2 of 2 passed in the sandbox.")
    assert (settings.artifacts_dir / run_id / "main.py").read_text() == FIXED


async def test_a_coder_that_never_fixes_stops_at_the_round_limit_and_says_so(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    executor_gives_checks(fake_groq)

    def stubborn(agent: str, body: dict[str, Any]) -> Reply | None:
        if agent != "coder":
            return None
        if body["messages"][-1]["role"] == "user":  # its task, or a failed round
            return Reply(calls=[Call("write_file", {"path": "main.py", "content": BROKEN})])
        return Reply(text="Done.")

    fake_groq.responder = stubborn
    limited = settings.model_copy(update={"check_rounds": 2})
    async with new_worker(settings=limited):
        run_id, handle = await start_pipeline(client, settings, check_rounds=2)
        result = await handle.result()
    assert result.status == "COMPLETED"  # not FAILED: the run ends, its checks say failed
    record = checks_of(engine, run_id, "coder")
    assert record["status"] == "failed" and len(record["rounds"]) == 2
    assert result.final_answer.endswith(
        "Checks: failed — 0 of 2 passed in the sandbox; failing: `python -m py_compile main.py` "
        "exited 1; `python main.py` exited 1."
    )
    run = get_run(engine, run_id)
    assert run is not None and run.status == "COMPLETED"
    assert sum(c.cost_usd for c in calls_of(engine, run_id)) < 1


async def test_a_dry_run_checks_the_files_it_would_have_written(
    client: Client,
    settings: Settings,
    fake_groq: FakeGroq,
    engine: Any,
    new_worker: Callable[..., Worker],
) -> None:
    executor_gives_checks(fake_groq)
    fake_groq.script(
        "coder",
        Reply(calls=[Call("write_file", {"path": "main.py", "content": FIXED})]),
        Reply(text="Done."),
    )
    async with new_worker():
        run_id, handle = await start_pipeline(client, settings, dry_run=True)
        result = await handle.result()
    assert not (settings.artifacts_dir / run_id).exists()  # nothing on disk
    record = checks_of(engine, run_id, "coder")
    assert record["status"] == "passed" and record["dry_run"] is True
    assert "dry run: on the files it would have written" in result.final_answer


async def test_a_worker_killed_during_the_checks_runs_them_again_and_bills_nothing_twice(
    client: Client, settings: Settings, fake_groq: FakeGroq, engine: Any, tmp_path: Path
) -> None:
    fake_groq.script("executor", Reply(text='Checks:\n```json\n["sleep 4", "python main.py"]\n```'))
    fake_groq.script(
        "coder",
        Reply(calls=[Call("write_file", {"path": "main.py", "content": FIXED})]),
        Reply(text="Done."),
    )
    with WorkerProcesses(settings, tmp_path) as workers:
        first = workers.spawn()
        run_id, handle = await start_pipeline(client, settings)
        await assert_eventually(_sleeping, timeout=60)  # the first check is running
        first.send_signal(signal.SIGKILL)
        first.wait()
        workers.spawn()
        result = await handle.result()
    assert result.status == "COMPLETED"
    record = checks_of(engine, run_id, "coder")
    assert record["status"] == "passed" and len(record["rounds"]) == 1
    assert fake_groq.count("coder") == 2  # no model turn re-sent
    assert [c.attempt for c in calls_of(engine, run_id) if c.agent == "coder"] == [1, 1]
    # The killed worker's command died with it (its namespace is torn down asynchronously).
    await assert_eventually(lambda: not _sleeping(), timeout=5, interval=0.1)
    assert [t.turn for t in turns_of(engine, run_id)[0] if t.agent == "coder"] == [1, 2]


def _sleeping() -> bool:
    return any(_cmdline(p).startswith("sleep 4") for p in os.listdir("/proc") if p.isdigit())
