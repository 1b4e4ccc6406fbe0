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
app.command()(runs.approve)
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
    from pydantic import ValidationError

    from crewline.settings import ConfigurationError

    try:
        app()
    except ValidationError as exc:  # the environment or .env: one line per variable
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            secret = any(w in where.upper() for w in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
            given = "" if secret else f"={str(error.get('input', ''))[:60]!r}"
            typer.echo(f"configuration error: {where}{given}: {error['msg']}", err=True)
        raise SystemExit(2) from None
    except ConfigurationError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise SystemExit(2) from None
