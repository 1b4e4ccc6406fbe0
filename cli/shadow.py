"""`crewline shadow …`: the divergence detector on labelled pairs (`eval`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.http import exit_hard, fail

app = typer.Typer(help="Shadow runs and the divergence detector.", no_args_is_help=True)


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{value * 100:5.1f}%"


def _line(name: str, rates: dict[str, Any], extra: str = "") -> str:
    return (
        f"{name:<38} {_pct(rates['recall'])} ({rates['caught']:>3}/{rates['diverged']:<3}) "
        f"{_pct(rates['false_alarm'])} ({rates['false_alarms']:>3}/{rates['equivalent']:<3}){extra}"
    )


@app.command("eval")
def evaluate_file(
    path: Annotated[Path, typer.Argument(help="JSON lines: id, agent, query, a, b, label, kind")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
) -> None:
    """Score the detector on labelled v1/v2 pairs: recall on diverged, false alarms on
    equivalent, per agent and per kind, with the thresholds in use."""
    from versioning.divergence.evaluate import evaluate, load

    try:
        pairs = load(path)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    report = evaluate(pairs)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        exit_hard(0)
    typer.echo(f"{'':<38} {'recall':>6} {'':>9} {'false alarms':>12}")
    for agent, rates in report["per_agent"].items():
        typer.echo(_line(agent, rates, f"   threshold {rates['threshold']}"))
    for kind, rates in report["per_kind"].items():
        typer.echo(_line(f"  {kind}", rates))
    typer.echo(_line("overall", report["overall"]))
    exit_hard(0)
