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


@app.command()
def calibrate(
    runs: Annotated[int, typer.Option("--runs", help="Recent completed runs to re-run")] = 5,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for them")] = 600,
) -> None:
    """Re-run recent inputs on the active version against itself: the noise floor per agent
    (the lowest score two honest runs of one version get), next to the threshold in use."""
    import time

    from cli.http import request
    from crewline.settings import Settings
    from versioning.divergence import DEFAULT_THRESHOLDS

    settings = Settings()
    started = request(settings, "POST", "/shadow/calibrate", json={"runs": runs})
    ids = started["shadow_runs"]
    typer.echo(f"re-running {len(ids)} run(s) on {started['version']} (dry-run) …")
    scores: dict[str, list[float]] = {}
    deadline = time.monotonic() + wait
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for run_id in sorted(pending):
            found = request(
                settings, "GET", "/divergences",
                params={"shadow_run_id": run_id, "alerts_only": False, "limit": 20},
            )  # fmt: skip
            if found:
                pending.discard(run_id)
                for row in found:
                    scores.setdefault(row["agent"], []).append(row["score"])
        time.sleep(1)
    if pending:
        typer.echo(f"{len(pending)} run(s) not compared within {wait:.0f}s: {sorted(pending)}")
    typer.echo(f"{'agent':<11} {'runs':>4} {'lowest':>7} {'median':>7}  threshold")
    for agent, values in sorted(scores.items()):
        values.sort()
        median = values[len(values) // 2]
        limit = DEFAULT_THRESHOLDS.get(agent, 0.5)
        flag = (
            "   (noise reaches the threshold: raise it or fix the agent)"
            if values[0] < limit
            else ""
        )
        typer.echo(f"{agent:<11} {len(values):>4} {values[0]:>7.2f} {median:>7.2f}  {limit}{flag}")
    exit_hard(0 if scores else 1)
