"""`crewline keys`: create (the key is printed once), list, revoke. Needs an admin key."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.http import exit_hard, request
from crewline.settings import Settings

app = typer.Typer(help="API keys: create, list, revoke (admin).", no_args_is_help=True)


@app.command()
def create(
    name: Annotated[str, typer.Option(help="who or what uses it, e.g. ci-bot")],
    # A plain string: the API checks it (and says which scopes exist); the CLI stays light.
    scope: Annotated[str, typer.Option(help="read | run | admin")] = "run",
) -> None:
    """Create a key. It is printed once, on stdout; only its hash is kept."""
    made = request(Settings(), "POST", "/keys", json={"name": name, "scope": scope})
    typer.echo(
        f"created key {made['key_id']} ({made['name']}, scope {made['scope']}); store it now, "
        "it cannot be shown again:",
        err=True,
    )
    typer.echo(made["key"])
    exit_hard(0)


@app.command("list")
def list_keys(
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
) -> None:
    """Every key: id, name, scope, when made and last used (never the key)."""
    rows = request(Settings(), "GET", "/keys", params={"revoked": revoked})
    typer.echo(f"{'id':<14} {'name':<24} {'scope':<6} {'source':<9} {'created':<20} last used")
    for k in rows:
        used = (k["last_used_at"] or "never")[:19]
        state = f"  REVOKED {k['revoked_at'][:19]}" if k["revoked_at"] else ""
        typer.echo(
            f"{k['key_id']:<14} {k['name']:<24} {k['scope']:<6} {k['source']:<9} "
            f"{k['created_at'][:19]:<20} {used}{state}"
        )
    exit_hard(0)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id, from `keys list`")]) -> None:
    """Revoke a key: it is refused from the next request on."""
    row = request(Settings(), "DELETE", f"/keys/{key_id}")
    typer.echo(f"revoked {row['key_id']} ({row['name']})")
    exit_hard(0)
