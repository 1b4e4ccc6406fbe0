"""The `crewline` command: every subcommand, registered in one place."""

from __future__ import annotations

import typer

from cli import keys, runs, services, shadow, versions

app = typer.Typer(
    help="crewline: durable multi-agent AI workflows on Temporal.", no_args_is_help=True
)
app.command()(runs.run)
app.command()(runs.status)
app.command("runs")(runs.list_runs)
app.command()(runs.cancel)
app.command()(runs.artifacts)
app.command()(runs.budget)
app.command()(runs.costs)
app.command()(runs.health)
app.command()(services.up)
app.command()(services.worker)
app.command()(services.api)
app.add_typer(versions.app, name="version")
app.add_typer(shadow.app, name="shadow")
app.add_typer(keys.app, name="keys")


def main() -> None:
    app()
