"""Shared test harness: one session-scoped dev server and one time-skipping server (both from their
wheels, nothing downloaded), a fresh task queue and database per test, the fake Groq server, and
`new_worker`, which builds exactly the worker production builds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cli.server import create_app
from cli.stack import _ApiServer
from crewline.db import make_engine
from crewline.settings import Settings
from crewline.temporal import DATA_CONVERTER, dev_server_path, test_server_path, tuning_args
from tests.fakes import FakeGroq
from tests.pg import PostgresServer, server_binaries
from workers.main import build_worker
from workflows.pipeline import AgentPipelineWorkflow, PipelineInput, PipelineResult, StepRetry

REPO = Path(__file__).resolve().parent.parent
CREWLINE = str(Path(sys.executable).parent / "crewline")
# Every test's API has this admin key (CREWLINE_ADMIN_KEY); `api` and `run_cli` send it.
ADMIN_KEY = "test-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    # The Temporal SDK's native core can abort the interpreter at exit after every test passed
    # (temporalio/sdk-python#300). All output is flushed by now: leave with pytest's own status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        data_converter=DATA_CONVERTER,
        dev_server_log_level="error",
        # The shipped tuning of the embedded server, so tests see the timings users get.
        dev_server_extra_args=tuning_args(),
        # In-process workers heartbeat like worker processes do (WORKER_HEARTBEAT_S), so
        # Temporal sees them live at once (the default runtime's first beat comes after 60 s).
        runtime=Runtime(
            telemetry=TelemetryConfig(), worker_heartbeat_interval=timedelta(seconds=1)
        ),
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(), data_converter=DATA_CONVERTER
    )
    yield env
    await env.shutdown()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked `both_databases` run once on SQLite and once on a real PostgreSQL server.
    marked = metafunc.definition.get_closest_marker("both_databases")
    if marked and "db_backend" in metafunc.fixturenames:
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (started only if a test needs it)."""
    bindir = server_binaries()
    if bindir is None:
        message = (
            "no PostgreSQL server binaries: `apt-get install postgresql` (`.ci/run` installs "
            "it; in CI its absence fails the run)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def client(dev_env: WorkflowEnvironment) -> Client:
    return dev_env.client


@pytest.fixture
def fake_groq() -> Iterator[FakeGroq]:
    server = FakeGroq().start()
    yield server
    server.stop()


# Fixtures that need the session's Temporal dev server (starting it takes seconds).
SERVER_FIXTURES = {"dev_env", "client", "api", "api_url", "new_worker", "ts_env"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `slow`: needs a Temporal server, PostgreSQL, a browser or child processes. The everyday
    # loop is `pytest -m "not slow"` (seconds); CI runs everything.
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_postgres = params.get("db_backend") == "postgresql"
        module = getattr(item, "module", None)
        if (
            names & SERVER_FIXTURES
            or on_postgres
            or getattr(module, "__name__", "") in SLOW_MODULES
        ):
            item.add_marker(pytest.mark.slow)


SLOW_MODULES = {
    "tests.test_bench", "tests.test_browser", "tests.test_stack", "tests.test_deploy",
    "tests.test_restart",
}  # fmt: skip


@pytest.fixture
def settings(
    tmp_path: Path,
    fake_groq: FakeGroq,
    db_backend: str,
    request: pytest.FixtureRequest,
) -> Settings:
    """Groq provider pointed at the fake server; everything written under tmp_path; the app
    database SQLite there, or a fresh PostgreSQL database (tests marked `both_databases`). Only a
    test that uses a Temporal server gets its address (and starts it): the others need none."""
    address = "127.0.0.1:1"  # nothing listens: a test that forgot to ask for a server fails fast
    if SERVER_FIXTURES & set(request.fixturenames):
        address = request.getfixturevalue("dev_env").client.service_client.config.target_host
    database_url = None
    if db_backend == "postgresql":
        database_url = request.getfixturevalue("postgres").new_database()
    return Settings(
        DATABASE_URL=database_url,
        LLM_PROVIDER="groq",
        GROQ_API_KEY="gsk_test_secret_key_123",
        GROQ_BASE_URL=fake_groq.base_url,
        GROQ_MODEL="llama-3.3-70b-versatile",
        CREWLINE_DATA_DIR=tmp_path / "data",
        TEMPORAL_ADDRESS=address,
        CREWLINE_TASK_QUEUE=f"tq-{uuid.uuid4().hex[:8]}",
        CREWLINE_DEPLOYMENT=f"dep-{uuid.uuid4().hex[:8]}",
        WORKER_HEARTBEAT_S=1,
        WORKER_METRICS_PORT=0,  # a test that scrapes a worker gives it a free port
        SEARCH_BACKEND="none",
        RECONCILE_EVERY_S=0.5,
        LLM_RETRY_BASE_S=0.05,
        LLM_RETRY_CAP_S=0.2,
        LLM_TIMEOUT_S=5,
        CREWLINE_ADMIN_KEY=ADMIN_KEY,
        _env_file=None,
    )


@pytest.fixture
def engine(settings: Settings) -> Any:
    return make_engine(settings.resolved_database_url)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, client: Client, engine: Any, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app (lifespan included) over ASGI, on these settings and database."""
    app = create_app(settings, client=client, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        ) as http:
            yield http


@pytest.fixture
async def api(client: Client, settings: Settings, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app on the test's settings and database, sending the admin key."""
    async with serving(settings, client, engine, AUTH) as http:
        yield http


@pytest.fixture
async def api_url(client: Client, settings: Settings, engine: Any) -> AsyncIterator[str]:
    port = free_port()
    server = _ApiServer(
        uvicorn.Config(
            create_app(settings, client=client, engine=engine), port=port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
def new_worker(client: Client, settings: Settings, engine: Any) -> Callable[..., Worker]:
    def _make(**kwargs: Any) -> Worker:
        kwargs.setdefault("engine", engine)
        kwargs.setdefault("search_backend", None)
        return build_worker(client, kwargs.pop("settings", settings), **kwargs)

    return _make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_pipeline(
    client: Client,
    settings: Settings,
    *,
    query: str = "Build a snake game",
    attempts: int | None = None,
    timeout_s: float = 120,
    **fields: Any,
) -> tuple[str, WorkflowHandle[Any, PipelineResult]]:
    """Start one pipeline run on the settings' task queue; `attempts` bounds each step's retries."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    if attempts is not None:
        fields["retry"] = StepRetry(max_attempts=attempts, timeout_s=timeout_s)
    handle = await client.start_workflow(
        AgentPipelineWorkflow.run,
        PipelineInput(run_id=run_id, query=query, **fields),
        id=run_id,
        task_queue=settings.task_queue,
    )
    return run_id, handle


async def run_cli(
    *args: str, api_url: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `crewline` command as a user runs it, against the API at `api_url`."""
    env = {
        "CREWLINE_API_URL": api_url,
        "CREWLINE_API_KEY": ADMIN_KEY,
        "PATH": "/usr/bin:/bin",
        **(extra_env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        CREWLINE, *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


async def assert_eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, interval: float = 0.1
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
