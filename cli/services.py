"""Commands that run crewline's processes: `up` (the embedded stack), `worker`, `api`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from cli.http import exit_hard, fail
from crewline.settings import ConfigurationError, Settings
from versioning.bundle import BundleError


def configure() -> Settings:
    from crewline.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json, redact=settings.secrets())
    return settings


def up(
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Worker processes for the active version (one core each; the API and the "
            "Temporal server run in processes of their own)",
        ),
    ] = 1,
) -> None:
    """Start the embedded stack: Temporal dev server (persisted), worker(s) and the API."""
    from cli.stack import run_stack

    settings = configure()
    try:
        asyncio.run(run_stack(settings, worker_processes=workers))
    except (ConfigurationError, RuntimeError, TimeoutError, ValueError) as exc:
        fail(str(exc))
    exit_hard(0)


def worker(
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Serve this snapshot (see `crewline version list`). Default: snapshot the "
            "working tree and serve that (it becomes current if no version is).",
        ),
    ] = None,
    unversioned: Annotated[
        bool,
        typer.Option(
            "--unversioned",
            help="Serve the working tree without worker versioning (no version ever activated)",
        ),
    ] = False,
) -> None:
    """Run a worker against TEMPORAL_ADDRESS (for a cluster or a separately started server)."""
    settings = configure()
    try:
        if unversioned:
            from workers.main import run_worker

            asyncio.run(run_worker(settings))
        else:
            from workers.serve import serve

            asyncio.run(serve(settings, version))
    except (ConfigurationError, BundleError) as exc:
        fail(str(exc))
    except RuntimeError as exc:
        fail(f"{exc} (TEMPORAL_ADDRESS={settings.temporal_address})")
    exit_hard(0)


def api() -> None:
    """Run the HTTP API against TEMPORAL_ADDRESS."""
    import uvicorn

    from cli.server import create_app, serve_config

    settings = configure()
    uvicorn.Server(serve_config(create_app(settings), settings)).run()
    exit_hard(0)
