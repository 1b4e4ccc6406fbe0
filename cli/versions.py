"""`crewline version …`: snapshot, list, show, diff, activate, rollback, history, delete.

`snapshot` builds the zip here (from this checkout, or `--from DIR`, with this environment's model
settings) and uploads it, so it works against a remote API too; everything else asks the API.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.http import exit_hard, fail, request
from crewline.settings import ConfigurationError, Settings
from records.statuses import AGENTS
from versioning.bundle import BundleError, collect, default_source, zip_bytes

app = typer.Typer(
    help="Versions of the agents: snapshots, activation, rollback.", no_args_is_help=True
)

Reason = Annotated[str | None, typer.Option("--reason", help="Why (kept in the history)")]
MoveInflight = Annotated[
    bool,
    typer.Option(
        "--move-inflight", help="Also move the open runs of the version being left (stop it now)"
    ),
]
Force = Annotated[
    bool, typer.Option("--force", help="Move in-flight runs even if the workflow code differs")
]


def _money(value: str | None) -> str:
    return f"${Decimal(value or 0):.6f}"


@app.command()
def snapshot(
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Another checkout of the project (default: this one)"),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="A label for the list")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print the id only")] = False,
) -> None:
    """Snapshot the agents (code, prompts, tools, model settings) as a new version."""
    settings = Settings()
    where = (source or default_source()).resolve()
    try:
        bundle = collect(where, settings)
    except BundleError as exc:
        fail(str(exc))
    params = {"note": note} if note else {}
    out = request(
        settings, "POST", "/versions", content=zip_bytes(bundle), params=params,
        headers={"content-type": "application/zip"},
    )  # fmt: skip
    if quiet:
        typer.echo(out["id"])
        exit_hard(0)
    state = "new" if out["created"] else "unchanged: this content is already a version"
    ms = bundle.manifest.model_settings
    try:  # the models these settings pick under this host's provider
        from activities.models import model_for  # a client: the tree's rule, never a worker's

        applied = ms.apply(settings)
        models = f"{applied.provider()}: " + ", ".join(
            sorted({model_for(applied, agent) for agent in AGENTS})
        )
    except ConfigurationError:
        models = ", ".join(sorted({ms.groq_model, *ms.agent_models.values()}))
    typer.echo(
        f"{out['id']}  ({state})\n  {out['files']} files, {out['prompts']} prompts from {where}\n"
        f"  models ({models}); max_tokens {ms.max_tokens}; temperature {ms.temperature}"
    )
    for skipped in bundle.skipped:
        typer.echo(f"  skipped {skipped}")
    exit_hard(0)


@app.command("list")
def list_versions() -> None:
    """Every version: active, live workers, runs served, spend."""
    settings = Settings()
    found = request(settings, "GET", "/versions")
    typer.echo(f"  {'version':<19} {'created':<17} {'workers':>7} {'runs':>6} {'spend':>11}  note")
    for v in found["items"]:
        mark = "*" if v["active"] else ("s" if v.get("candidate") else " ")
        created = v["created_at"][:16].replace("T", " ")
        shadow = float(v.get("shadow_spend_usd") or 0)
        extra = f" + {_money(v['shadow_spend_usd'])} shadow" if shadow else ""
        note = ("[uploaded] " if v.get("uploaded") else "") + (v["note"] or "")
        typer.echo(
            f"{mark} {v['id']:<19} {created:<17} {v['live_workers']:>7} {v['runs']:>6} "
            f"{_money(v['spend_usd']):>11}{extra}  {note}"
        )
    typer.echo(f"* active: {found['active'] or 'none'}   (deployment {found['deployment']})")
    if found.get("candidate"):
        typer.echo(f"s shadow candidate: {found['candidate']} at {found['shadow_rate']:.0%}")
        if found.get("shadow_paused"):
            typer.echo(f"  {found['shadow_paused']}")
    exit_hard(0)


@app.command()
def show(version_id: str) -> None:
    """A version's manifest: files and hashes, model settings, tools, workers."""
    settings = Settings()
    v = request(settings, "GET", f"/versions/{version_id}")
    active = "  (active)" if v["active"] else ""
    source = "uploaded through the API (code someone sent)" if v.get("uploaded") else v["source"]
    typer.echo(f"{v['id']}{active}  created {v['created_at'][:19]}  from {source}")
    typer.echo(
        f"runs {v['runs']}, spend {_money(v['spend_usd'])}, live workers {v['live_workers']}"
    )
    typer.echo("model settings:")
    for key, value in v["model_settings"].items():
        typer.echo(f"  {key}: {value}")
    typer.echo("tools:")
    for tool in v["tools"]:
        effects = "side effects" if tool["side_effects"] else "read-only"
        typer.echo(f"  {tool['name']} ({effects}): {tool['description']}")
    typer.echo(f"files ({v['files']}):")
    for entry in v["files_list"]:
        typer.echo(f"  {entry['sha256'][:12]}  {entry['path']}")
    exit_hard(0)


@app.command()
def diff(
    a: str,
    b: str,
    all_files: Annotated[bool, typer.Option("--all", help="Diff code files too")] = False,
) -> None:
    """What changed from version A to version B (prompt diffs included)."""
    settings = Settings()
    d = request(settings, "GET", f"/versions/{a}/diff/{b}", params={"all": all_files})
    for label, key in (("added", "added"), ("removed", "removed"), ("changed", "changed")):
        for path in d[key]:
            typer.echo(f"{label:<8} {path}")
    for key, (old, new) in d["model_settings"].items():
        typer.echo(f"model    {key}: {old} -> {new}")
    for name, (old, new) in d["tools"].items():
        typer.echo(f"tool     {name}: {old} -> {new}")
    if not any(d[k] for k in ("added", "removed", "changed", "model_settings", "tools")):
        typer.echo("no differences")
    for text in d["diffs"].values():
        typer.echo("\n" + text.rstrip("\n"))
    if d.get("note"):
        typer.echo(f"\nnote: {d['note']}")
    exit_hard(0)


def _print_change(out: dict[str, Any]) -> None:
    if not out["changed"]:
        typer.echo(f"{out['to_version']} is already active; nothing changed")
        return
    moved = f"; moved {out['moved_runs']} open run(s)" if out["moved_runs"] else ""
    typer.echo(f"{out['action']}: {out['from_version'] or 'none'} -> {out['to_version']}{moved}")


@app.command()
def activate(
    version_id: str,
    reason: Reason = None,
    move_inflight: MoveInflight = False,
    force: Force = False,
) -> None:
    """Make VERSION_ID current: new runs start on it; open runs finish on theirs."""
    settings = Settings()
    body = {"reason": reason, "move_inflight": move_inflight, "force": force}
    _print_change(request(settings, "POST", f"/versions/{version_id}/activate", json=body))
    exit_hard(0)


@app.command()
def rollback(
    reason: Reason = None, move_inflight: MoveInflight = False, force: Force = False
) -> None:
    """Return to the version that was active before the current one."""
    settings = Settings()
    current = request(settings, "GET", "/versions")["active"]
    if current is None:
        fail("no version is active, so there is nothing to roll back from")
    body = {
        "from_version": current, "reason": reason, "move_inflight": move_inflight, "force": force,
    }  # fmt: skip
    out = request(settings, "POST", "/versions/rollback", json=body)
    if out["changed"]:
        _print_change(out)
    else:
        typer.echo(f"already rolled back from {current} to {out['to_version']}; nothing changed")
    exit_hard(0)


@app.command()
def history(limit: Annotated[int, typer.Option()] = 20) -> None:
    """Changes of the active version, newest first."""
    settings = Settings()
    for row in request(settings, "GET", "/versions/history", params={"limit": limit})["items"]:
        at = row["at"][:19].replace("T", " ")
        moved = f"  moved {row['moved_runs']} run(s)" if row["moved_runs"] else ""
        why = f"  — {row['reason']}" if row["reason"] else ""
        who = f"  by {row['by']}" if row["by"] else ""
        typer.echo(
            f"{at}  {row['action']:<9} {row['from_version'] or 'none':<19} -> "
            f"{row['to_version']}{moved}{who}{why}"
        )
    exit_hard(0)


@app.command()
def delete(version_id: str) -> None:
    """Delete a version that is not active and pinned by no open run."""
    settings = Settings()
    request(settings, "DELETE", f"/versions/{version_id}", expect_json=False)
    typer.echo(f"deleted {version_id}")
    exit_hard(0)


@app.command("shadow")
def shadow_version(
    version_id: str,
    rate: Annotated[float, typer.Option("--rate", help="Share of runs to shadow; 0 stops")] = 0.05,
) -> None:
    """Shadow VERSION_ID: re-run that share of new runs on it, in dry-run, and compare."""
    settings = Settings()
    if rate <= 0:
        request(settings, "DELETE", "/versions/shadow")
        typer.echo("shadowing stopped")
        exit_hard(0)
    out = request(settings, "POST", f"/versions/{version_id}/shadow", json={"rate": rate})
    typer.echo(
        f"shadowing {out['candidate']} on {out['rate']:.0%} of runs (dry-run; shadow spend "
        f"${Decimal(out['spent_today_usd']):.6f} of ${Decimal(out['daily_cap_usd'])} today)"
    )
    if out.get("paused"):
        typer.echo(out["paused"])
    exit_hard(0)


@app.command()
def report(version_id: str, examples: Annotated[int, typer.Option()] = 1) -> None:
    """How VERSION_ID did as a shadow: divergence per agent, worst cases, spend and latency."""
    settings = Settings()
    r = request(settings, "GET", f"/versions/{version_id}/report")
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["by_status"].items())) or "none"
    typer.echo(
        f"{version_id}: {r['shadow_runs']} shadow runs ({states}), {r['compared_runs']} compared"
    )
    p50 = lambda v: "-" if v is None else f"{v:.1f}s"  # noqa: E731
    typer.echo(
        f"  spend: candidate ${Decimal(r['candidate_spend_usd']):.6f} vs active "
        f"${Decimal(r['active_spend_usd']):.6f} on the same runs;  latency p50: candidate "
        f"{p50(r['candidate_seconds_p50'])} vs active {p50(r['active_seconds_p50'])}"
    )
    for agent, a in r["per_agent"].items():
        rate = "-" if a["alert_rate"] is None else f"{a['alert_rate']:.0%}"
        typer.echo(f"  {agent:<11} diverged {a['alerts']}/{a['compared']} ({rate})")
        for worst in a["worst"][:examples]:
            typer.echo(f"    run {worst['run_id']}  score {worst['score']:.2f}")
            for reason in worst["reasons"][:3]:
                typer.echo(f"      - {reason}")
            typer.echo("      v1: " + worst["primary_output"][:160].replace("\n", " "))
            typer.echo("      v2: " + worst["shadow_output"][:160].replace("\n", " "))
    if r["intents_differ"]:
        typer.echo(
            f"  side effects differ in {len(r['intents_differ'])} run(s): {r['intents_differ'][:5]}"
        )
    exit_hard(0)
