"""`crewline shadow …`: the divergence detector on labelled pairs (`eval`, offline or with the
judge) and the active version's own noise (`calibrate`)."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.http import exit_hard, fail

app = typer.Typer(help="Shadow runs and the divergence detector.", no_args_is_help=True)


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{value * 100:5.1f}%"


def _line(name: str, rates: dict[str, Any]) -> str:
    return (
        f"{name:<42} {_pct(rates['recall'])} ({rates['caught']:>3}/{rates['diverged']:<3}) "
        f"{_pct(rates['false_alarm'])} ({rates['false_alarms']:>3}/{rates['equivalent']:<3})"
        f"  {rates['uncertain']:>3}"
    )


@app.command("eval")
def evaluate_file(
    path: Annotated[Path, typer.Argument(help="JSON lines: id, agent, query, a, b, label, kind")],
    judge: Annotated[
        bool, typer.Option("--judge", help="Add layer 4: the configured model judges each pair")
    ] = False,
    max_usd: Annotated[
        float, typer.Option("--max-usd", help="Ask before a judge run that may cost more")
    ] = 0.50,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask (scripts, CI)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
) -> None:
    """Score the detector on labelled active/candidate pairs: recall on diverged, false alarms
    on equivalent, uncertain apart; per agent, per kind and per layer. Offline (layers 1-2) by
    default; `--judge` asks the configured model (DIVERGENCE_JUDGE_MODEL) about every pair
    layers 1-2 leave quiet, in both orders, after saying what it may cost."""
    from crewline.settings import ConfigurationError, Settings
    from versioning.divergence.evaluate import evaluate, judge_estimate, load

    try:
        pairs = load(path)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    settings = Settings()
    threshold = settings.divergence_threshold
    model = None
    if judge:
        from versioning.divergence.judge import Judge

        try:
            model = Judge(settings)
        except ConfigurationError as exc:
            fail(str(exc))
        worst = judge_estimate(pairs, model, threshold)
        typer.echo(
            f"the judge ({model.provider.name}/{model.model}) reads the pairs layers 1-2 leave "
            f"quiet, twice each: at most ${worst:.4f}",
            err=True,
        )
        if worst > Decimal(str(max_usd)) and not yes:
            if not sys.stdin.isatty():
                fail(f"that is over --max-usd {max_usd}: pass --yes to run it anyway")
            if not typer.confirm("run it?", err=True):
                exit_hard(1)
    report = evaluate(pairs, threshold=threshold, judge=model)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        exit_hard(0)
    layers = " + ".join(report["layers"])
    typer.echo(f"layers: {layers}; threshold {threshold}" + (
        f"; judge spent ${Decimal(report['judge_cost_usd']):.4f}" if judge else ""
    ))  # fmt: skip
    typer.echo(f"{'':<42} {'recall':>6} {'':>9} {'false alarms':>12} {'uncertain':>9}")
    for agent, rates in report["per_agent"].items():
        typer.echo(_line(agent, rates))
    for kind, rates in report["per_kind"].items():
        typer.echo(_line(f"  {kind}", rates))
    if report["decidable"]:
        typer.echo(_line("decidable kinds (no world knowledge)", report["decidable"]))
    typer.echo(_line("overall", report["overall"]))
    by_layer = ", ".join(f"{k} {v}" for k, v in sorted(report["alerts_by_layer"].items()))
    typer.echo(f"alerts by layer: {by_layer or 'none'}")
    exit_hard(0)


@app.command()
def calibrate(
    runs: Annotated[int, typer.Option("--runs", help="Recent completed runs to re-run")] = 5,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for them")] = 600,
) -> None:
    """Re-run recent inputs on the active version against itself and show each agent's noise:
    how often each kind of finding fires between two honest runs of one version. A kind that
    fires on 20% or more of them is reported as uncertain for that agent, not as an alert."""
    import time

    from cli.http import request
    from crewline.settings import Settings

    settings = Settings()
    started = request(settings, "POST", "/shadow/calibrate", json={"runs": runs})
    ids, version = started["shadow_runs"], started["version"]
    typer.echo(f"re-running {len(ids)} run(s) on {version} (dry-run) …")
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
        if pending:
            time.sleep(1)
    if pending:
        typer.echo(f"{len(pending)} run(s) not compared within {wait:.0f}s: {sorted(pending)}")
    report = request(settings, "GET", f"/versions/{version}/report")
    typer.echo(f"{'agent':<11} {'compared':>8}  noise (share of its own reruns each kind fires on)")
    for agent, row in report["per_agent"].items():
        noise = ", ".join(f"{k} {v:.0%}" for k, v in row["noise"].items()) or "none"
        flag = f"   too noisy to alert: {', '.join(row['noisy'])}" if row["noisy"] else ""
        typer.echo(f"{agent:<11} {row['compared']:>8}  {noise}{flag}")
    exit_hard(0 if len(pending) < len(ids) else 1)
