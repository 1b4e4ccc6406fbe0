"""`crewline up`: the embedded stack in one command — Temporal dev server, a worker process per
version in play, and the API.

Workers are child processes because a process can hold only one version of the agent code (each
serves its snapshot zip, `workers/serve.py`): the active version, and the version a rollback would
return to, so one-call rollback is instant. On a fresh data directory the working tree is
snapshotted and activated, so a newcomer never has to know about versions.

The dev server persists to `<data dir>/temporal.db`, so stopping the stack loses nothing and the
next `up` resumes unfinished runs on the versions that started them. Ctrl-C (or SIGTERM) shuts
down in order: the API stops taking requests, the workers let in-flight calls finish, the server
stops. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from sqlalchemy import Engine
from temporalio.client import Client

from cli.server import create_app, serve_config, stop_streams
from crewline.db import make_engine
from crewline.process import stop_processes
from crewline.settings import Settings
from crewline.telemetry import setup_tracing
from crewline.temporal import DevServer, connect, die_with_parent, port_open
from services import keys
from versioning import activation, deployment, registry, shadow
from versioning.bundle import BundleError, collect, default_source
from versioning.deployment import DeploymentState
from versioning.loader import check_servable
from workers.main import GRACEFUL_SHUTDOWN
from workers.serve import snapshot_working_tree

log = structlog.get_logger("crewline.stack")

READY_TIMEOUT_S = 90.0


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the stack decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:  # else serve() returns, and the caller sees the task end
            self.ready.set()

    @property
    def ready(self) -> asyncio.Event:
        if not hasattr(self, "_ready"):
            self._ready = asyncio.Event()
        return self._ready


class WorkerChildren:
    """`crewline worker` processes of this stack. Each has its own session, so the terminal's
    Ctrl-C reaches the stack only and the stack stops them once, gracefully; they die with it."""

    def __init__(self, settings: Settings) -> None:
        self._env = {
            **os.environ,
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "CREWLINE_DATA_DIR": str(settings.data_dir.resolve()),
        }
        self._metrics_port = settings.worker_metrics_port
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str]]] = {}

    def spawn(self, version: str | None, *, unversioned: bool = False) -> str:
        """A worker for `version`, or (None) for a fresh snapshot of the working tree, or the
        working tree without versioning (`unversioned`); its name. Each serves /metrics on its
        own port: WORKER_METRICS_PORT, the next one, …"""
        command = [sys.executable, "-m", "cli", "worker"]
        if unversioned:
            command += ["--unversioned"]
        elif version is not None:
            command += ["--version", version]
        env = dict(self._env)
        if self._metrics_port:
            env["WORKER_METRICS_PORT"] = str(self._metrics_port + len(self.processes))
        name = "unversioned" if unversioned else version or "working tree"
        if name in self.processes:
            name = f"{name} #{sum(1 for n in self.processes if n.startswith(name)) + 1}"
        self._commands[name] = (command, env)
        self.processes[name] = self._start(name)
        return name

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        command, env = self._commands[name]
        # Popen from the event loop's thread: the death signal is tied to the spawning thread.
        return subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=die_with_parent
        )

    def respawn(self, name: str) -> None:
        self.processes[name] = self._start(name)

    def exited(self) -> list[str]:
        return [
            f"{v} (exit {p.returncode})" for v, p in self.processes.items() if p.poll() is not None
        ]

    def stop(self) -> None:
        """SIGTERM (in-flight calls finish), then SIGKILL what has not stopped in time."""
        stop_processes(self.processes.values(), timeout_s=GRACEFUL_SHUTDOWN.total_seconds() + 5)

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()


class Supervisor:
    """Keeps the stack's children alive: the Temporal dev server and the worker processes. A child
    that dies is logged and restarted after a backoff (1 s, doubling, at most 30 s; reset once it
    has run a minute); `health()` says what is down (the API's /health shows it as `stack`)."""

    BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 1.0, 30.0, 60.0

    def __init__(self, server: DevServer, workers: WorkerChildren) -> None:
        self.server, self.workers = server, workers
        self.restarts: dict[str, int] = {}
        self.down: dict[str, str] = {}  # child -> why
        self._backoff: dict[str, float] = {}
        self._since: dict[str, float] = {}

    def health(self) -> dict[str, Any]:
        return {"ok": not self.down, "down": dict(self.down), "restarts": dict(self.restarts)}

    async def watch(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            now = loop.time()
            if self.server.process is not None and self.server.process.poll() is not None:
                await self._restart("temporal server", now, self._restart_server)
            for name, process in list(self.workers.processes.items()):
                if process.poll() is not None and not stop.is_set():
                    await self._restart(f"worker {name}", now, lambda n=name: self._respawn(n))
            for name, started in list(self._since.items()):
                if now - started > self.HEALTHY_AFTER_S:
                    self._backoff.pop(name, None)
                    self._since.pop(name, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    async def _restart(self, child: str, now: float, start: Any) -> None:
        code = (
            self.server.process.returncode if child == "temporal server" and self.server.process
            else None
        )  # fmt: skip
        if child not in self.down:
            self.down[child] = f"exited{f' with {code}' if code is not None else ''}; restarting"
            log.error("stack.child_died", child=child)
        delay = self._backoff.get(child, self.BACKOFF_FIRST_S)
        await asyncio.sleep(delay)
        self._backoff[child] = min(delay * 2, self.BACKOFF_MAX_S)
        try:
            await start()
        except Exception as exc:  # try again after a longer backoff
            self.down[child] = f"restart failed: {str(exc)[:200]}"
            log.error("stack.restart_failed", child=child, error=str(exc)[:200])
            return
        self.restarts[child] = self.restarts.get(child, 0) + 1
        self.down.pop(child, None)
        self._since[child] = asyncio.get_running_loop().time()
        log.warning("stack.child_restarted", child=child, restarts=self.restarts[child])

    async def _restart_server(self) -> None:
        await self.server.start()

    async def _respawn(self, name: str) -> None:
        self.workers.respawn(name)


def _stop_event(server: DevServer, workers: WorkerChildren) -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal() -> None:
        if event.is_set():  # second signal: stop at once
            workers.kill()
            server.stop(timeout_s=2)
            os._exit(130)
        print("\nstopping (again to force)…", flush=True)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal)
    return event


UNVERSIONED = "none: VERSIONING_ENABLED=false, the working tree unversioned"


@dataclass(frozen=True)
class Plan:
    """Which versions this stack's workers serve, and a version to make current once its worker
    is live (a fresh deployment, or an active version this crewline cannot serve)."""

    serve: list[str]
    activate: str | None = None
    why: str | None = None


def _plan(client_state: DeploymentState, settings: Settings, engine: Engine) -> Plan:
    """The active version, the one a rollback returns to and the shadow candidate (if their zips
    are here). On a fresh deployment: the working tree, snapshotted here (the control plane) and
    activated once served."""
    current = client_state.current
    if current is None:
        tree = snapshot_working_tree(settings, engine)
        return Plan([tree], activate=tree, why="first start: no version was active")
    row = registry.get(engine, current)
    try:
        if row is not None:
            check_servable(row.manifest(), current)
    except BundleError as exc:
        tree = snapshot_working_tree(settings, engine)
        log.warning("stack.active_version_unservable", version=current, error=str(exc))
        return Plan([tree], activate=tree, why=f"{current} cannot be served by this crewline")
    if row is not None and not _may_run(row, settings):
        raise RuntimeError(
            f"the active version {current} was uploaded through the API (POST /versions): its "
            "code would run on this machine's workers with the provider key in their "
            "environment. Review it, then set ALLOW_UPLOADED_BUNDLES=true, or start its worker "
            f"yourself: crewline worker --version {current}"
        )
    rows = registry.history(engine, limit=10_000)
    stack = registry.active_stack(reversed(rows), current)
    serve = [current]
    candidate = shadow.get_config(engine).candidate
    for extra in (stack[-2] if len(stack) >= 2 else None, candidate):
        if not extra or extra in serve or not (settings.snapshots_dir / f"{extra}.zip").is_file():
            continue
        found = registry.get(engine, extra)
        if found is not None and not _may_run(found, settings):
            log.warning(
                "stack.uploaded_version_not_started", version=extra,
                how="review it; then ALLOW_UPLOADED_BUNDLES=true, or start its worker: "
                f"crewline worker --version {extra}",
            )  # fmt: skip
            continue
        serve.append(extra)
    return Plan(serve)


def _may_run(row: registry.VersionRow, settings: Settings) -> bool:
    """Whether `up` may start a worker for this version by itself: not uploaded, or allowed."""
    return row.source != registry.UPLOADED or settings.allow_uploaded_bundles


async def _wait_ready(
    client: Client, settings: Settings, engine: Engine, workers: WorkerChildren, plan: Plan
) -> str:
    """Until the deployment has a current version with a live worker (making `plan.activate`
    current once its worker is live); its id."""
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        dead = workers.exited()
        if dead:
            raise RuntimeError(f"worker process exited: {', '.join(dead)}; see its output above")
        live = await deployment.live_workers(client, settings)
        state = await deployment.describe(client, settings)
        if plan.activate and state.current != plan.activate and live.get(plan.activate):
            if state.current is None:
                await activation.bootstrap(
                    client, settings, engine, plan.activate, by="crewline up"
                )
            else:
                await activation.activate(
                    client, settings, engine, plan.activate, reason=plan.why, by="crewline up"
                )
            log.info("version.bootstrapped", version=plan.activate, why=plan.why)
            continue
        if state.current and live.get(state.current):
            return state.current
        await asyncio.sleep(0.3)
    raise TimeoutError(f"no worker served the active version within {READY_TIMEOUT_S:.0f}s")


def _tree_notice(settings: Settings, active: str) -> str:
    if active == UNVERSIONED:
        return ""
    try:
        tree = collect(default_source(), settings).id
    except BundleError as exc:
        return f"\n  (could not snapshot the working tree: {exc})"
    if tree == active:
        return ""
    return (
        f"\nNote: the working tree ({tree}) differs from the active version. To deploy it: run\n"
        f"  `crewline worker` in another terminal (it snapshots and serves the tree), then\n"
        f"  `crewline version activate {tree}`."
    )


def _key_notice(settings: Settings) -> str:
    if settings.admin_key is not None:
        return "admin key from CREWLINE_ADMIN_KEY"
    path = keys.key_file(settings)
    if path.is_file():
        return f"admin key in {path.resolve()} (mode 0600; the CLI here uses it)"
    return "set CREWLINE_API_KEY (`crewline keys create` on the server makes one)"


def _banner(settings: Settings, server: DevServer, active: str, workers: int) -> str:
    provider = settings.provider()
    label = " (offline canned answers, not a real model)" if provider == "scripted" else ""
    return (
        f"crewline is up — LLM provider: {provider}{label}\n"
        f"  Dashboard {settings.resolved_api_url}/   (sign in with the API key below)\n"
        f"  API       {settings.resolved_api_url}   (docs: {settings.resolved_api_url}/docs)\n"
        f"  Web UI    http://{server.ip}:{server.ui_port}\n"
        f"  Temporal  {server.address}   (history: {server.db_file})\n"
        + (
            f"  Version   {active}, "
            if active == UNVERSIONED
            else f"  Version   {active} (active; `crewline version list`), "
        )
        + f"{workers} worker process{'es' if workers > 1 else ''}\n"
        f"  Data      {settings.data_dir.resolve()}\n"
        f"  API key   {_key_notice(settings)}\n"
        f'Try:  .venv/bin/crewline run "Build a snake game"      Ctrl-C stops everything.'
        + _tree_notice(settings, active)
    )


async def run_stack(settings: Settings, worker_processes: int = 1) -> None:
    """`worker_processes`: how many worker processes serve the active version (the API and the
    Temporal server are processes of their own; a worker is one Python process, one core)."""
    if worker_processes < 1:
        raise ValueError(f"--workers must be at least 1, got {worker_processes}")
    settings.provider()  # fail at once, before starting anything, if no provider is configured
    if port_open(settings.api_host, settings.api_port):
        raise RuntimeError(f"port {settings.api_port} is in use; stop that process or set API_PORT")
    server = DevServer(
        settings.data_dir / "temporal.db",
        port=settings.temporal_port,
        ui_port=settings.temporal_ui_port,
    )
    await server.start()
    settings = settings.model_copy(update={"temporal_address": server.address})
    workers = WorkerChildren(settings)
    tracing = setup_tracing(settings, "crewline-api")
    try:
        stop = _stop_event(server, workers)
        client = await connect(settings, interceptors=tracing.interceptors())
        engine = make_engine(settings.resolved_database_url)
        if settings.versioning_enabled:
            state = await activation.reconcile(client, settings, engine)
            plan = await asyncio.to_thread(_plan, state, settings, engine)
            for version in plan.serve:
                workers.spawn(version)
            active = await _wait_ready(client, settings, engine, workers, plan)
            # More processes for the active version once it exists (on a fresh deployment the
            # first worker snapshots the tree and activates it; the others then serve it).
            for _ in range(worker_processes - 1):
                workers.spawn(active)
        else:  # VERSIONING_ENABLED=false: the working tree, no snapshot, no activation
            for _ in range(worker_processes):
                workers.spawn(None, unversioned=True)
            active = UNVERSIONED
        supervisor = Supervisor(server, workers)
        watching = asyncio.create_task(supervisor.watch(stop))
        app = create_app(
            settings, client=client, engine=engine, tracing=tracing,
            health_parts={"stack": supervisor.health},
        )  # fmt: skip
        api = _ApiServer(serve_config(app, settings))
        api_task = asyncio.create_task(api.serve())
        # The banner only once the API answers (or has failed to start: then its error shows).
        await asyncio.wait(
            {api_task, asyncio.create_task(api.ready.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if api_task.done():
            await api_task
        print(_banner(settings, server, active, len(workers.processes)), flush=True)
        await asyncio.wait(
            {api_task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        await stop_streams(app)
        api.should_exit = True
        await api_task
        stop.set()
        await watching
        log.info("stack.workers_stopping")
        await asyncio.to_thread(workers.stop)
    finally:
        workers.kill()
        server.stop()
        tracing.shutdown()
        log.info("stack.stopped")
