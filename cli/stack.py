"""`crewline up`: the embedded stack in one command — Temporal dev server, one worker, the API.

The dev server persists to `<data dir>/temporal.db`, so stopping the stack loses nothing and the
next `up` resumes unfinished runs. Ctrl-C (or SIGTERM) shuts down in order: the API stops taking
requests, the worker lets in-flight calls finish, the server stops. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from api.app import create_app
from crewline.settings import Settings
from crewline.temporal import DevServer, connect, port_open
from workers.main import build_worker

log = structlog.get_logger("crewline.stack")


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the stack decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_event(server: DevServer) -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal() -> None:
        if event.is_set():  # second signal: stop at once
            server.stop(timeout_s=2)
            os._exit(130)
        print("\nstopping (again to force)…", flush=True)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal)
    return event


def _banner(settings: Settings, server: DevServer) -> str:
    provider = settings.provider()
    label = " (offline canned answers, not a real model)" if provider == "scripted" else ""
    return (
        f"crewline is up — LLM provider: {provider}{label}\n"
        f"  API       {settings.resolved_api_url}   (docs: {settings.resolved_api_url}/docs)\n"
        f"  Web UI    http://{server.ip}:{server.ui_port}\n"
        f"  Temporal  {server.address}   (history: {server.db_file})\n"
        f"  Data      {settings.data_dir.resolve()}\n"
        f'Try:  .venv/bin/crewline run "Build a snake game"      Ctrl-C stops everything.'
    )


async def run_stack(settings: Settings) -> None:
    settings.provider()  # fail at once, before starting anything, if no provider is configured
    if port_open(settings.api_host, settings.api_port):
        raise RuntimeError(f"port {settings.api_port} is in use; stop that process or set API_PORT")
    server = DevServer(
        settings.data_dir / "temporal.db",
        port=settings.temporal_port,
        ui_port=settings.temporal_ui_port,
    )
    await server.start()
    try:
        settings = settings.model_copy(update={"temporal_address": server.address})
        stop = _stop_event(server)
        client = await connect(settings)
        worker = build_worker(client, settings)
        app = create_app(settings, client=client)
        api = _ApiServer(
            uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning")
        )
        async with worker:
            api_task = asyncio.create_task(api.serve())
            await asyncio.sleep(0.5)
            print(_banner(settings, server), flush=True)
            await asyncio.wait(
                {api_task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
            api.should_exit = True
            await api_task
            log.info("stack.worker_stopping")
    finally:
        server.stop()
        log.info("stack.stopped")
