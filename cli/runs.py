"""Client commands about runs and spend: `run`, `status`, `runs`, `cancel`, `budget`, `costs`,
`health`. They talk to the API only (`cli/http.py`), so they work against any crewline deployment.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.http import api_client, exit_hard, fail, request
from cli.watch import RunWatch
from crewline.settings import Settings
from records.statuses import TERMINAL as TERMINAL_STATUSES


def _elapsed(step: dict[str, Any]) -> str:
    if not step.get("started_at"):
        return ""
    start = datetime.fromisoformat(step["started_at"])
    end = datetime.fromisoformat(step["finished_at"]) if step.get("finished_at") else None
    if end is None:
        return ""
    return f"{(end - start).total_seconds():5.1f}s"


def _step_line(step: dict[str, Any]) -> str:
    status = step["status"]
    mark = {
        "COMPLETED": "✓", "FAILED": "✗", "CANCELLED": "■", "ERROR": "!", "WAITING": "…",
        "WAITING_FOR_RATE_LIMIT": "…",
        "BUDGET_EXCEEDED": "$", "WAITING_FOR_BUDGET": "$", "WAITING_FOR_APPROVAL": "?",
    }.get(status, "▶")  # fmt: skip
    tokens = ""
    if step.get("prompt_tokens") is not None:
        tokens = f"  {step['prompt_tokens']}→{step['completion_tokens']} tokens"
    attempt = f"  attempt {step['attempt']}" if step.get("attempt", 1) > 1 else ""
    turns = len(step.get("turns") or [])
    if turns > 1:
        attempt += f"  {turns} turns"
    extra = f"  {step['error']}" if step.get("error") else ""
    if status == "COMPLETED" and step.get("notes"):
        extra += f"  ({step['notes'][:160]})"
    model = f"  [{step['model']}]" if step.get("model") else ""
    if step.get("cost_usd") is not None:
        tokens += f"  ${Decimal(step['cost_usd']):.6f}"
    label = "working…" if status == "RUNNING" else status.lower().replace("_for_", " for ")
    return (
        f"  {mark} {step['agent']:<10} {label:<10} {_elapsed(step)}{tokens}{model}{attempt}{extra}"
    )


def _trace(run: dict[str, Any]) -> str:
    """The run's trace id, and its Jaeger link when the API knows one (JAEGER_UI_URL)."""
    link = run.get("links", {}).get("trace")
    return f"trace {run['trace_id']}" + (f"  {link}" if link else "")


def _spend(run: dict[str, Any]) -> str:
    """What the run spent — the API's figure (its settled ledger rows), the one the dashboard
    and `crewline costs` show too — and its budget."""
    spent = Decimal(run.get("spent_usd") or 0)
    budget = f" of ${Decimal(run['budget_usd']).normalize():f}" if run.get("budget_usd") else ""
    return f"${spent:.6f}{budget}"


def _call_line(agent: str, call: dict[str, Any]) -> str:
    """A tool call as the live view shows it: `researcher ▸ web_search 'stripe' → 8 results`."""
    mark = "▸" if call.get("ok") is not False else "✗"
    outcome = f" → {call['result']}" if call.get("result") else ""
    took = f"  ({call['duration_ms'] / 1000:.1f}s)" if call.get("duration_ms") else ""
    return f"    {agent:<10} {mark} {call['summary']}{outcome}{took}"


def _check_rounds(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every finished round of acceptance checks: (agent, round)."""
    return [
        (step["agent"], r)
        for step in run["steps"]
        if isinstance(step.get("checks"), dict)
        for r in step["checks"].get("rounds", [])
    ]


def _round_line(agent: str, r: dict[str, Any]) -> str:
    results = r["results"]
    passed = sum(1 for x in results if x["passed"])
    mark = "✓" if passed == len(results) else "✗"
    failing = "; ".join(
        f"`{x['command']}` {x['limit'] or 'exit ' + str(x['exit_code'])}"
        for x in results
        if not x["passed"]
    )
    return f"    {agent:<10} {mark} checks round {r['round']}: {passed}/{len(results)} passed" + (
        f" — {failing}" if failing else ""
    )


REFUSED = ("DENIED", "TIMED_OUT", "CANCELLED")


def _calls_as_they_went(
    run: dict[str, Any],
) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """Every tool call of the run in order, finished or not, with its approval if it needed
    one: (agent, call, approval)."""
    approvals = {a["call_id"]: a for a in run.get("approvals", [])}
    return [
        (step["agent"], call, approvals.get(call["call_id"]))
        for step in run["steps"]
        for turn in step.get("turns", [])
        for call in turn.get("tool_calls", [])
    ]


def _approval_line(approval: dict[str, Any]) -> str:
    """A call that needed a person, as `run` and `status` show it: waiting (with the agent's
    stated reason and the command that decides), or how it was decided."""
    head = f"    {approval['agent']:<10}"
    state = approval["state"]
    if state == "PENDING":
        why = f" — {approval['reason'][:160]!r}" if approval.get("reason") else ""
        return (
            f"{head} ? {approval['call']} waits for approval{why}\n"
            f"{'':16}decide: crewline approve {approval['run_id']} {approval['call_id']}"
            " [--deny --reason '…']"
        )
    if state == "WOULD_ASK":
        return f"{head} ? {approval['call']}: would ask for approval (shadow: not run)"
    mark = "✓" if state == "APPROVED" else "✗"
    verb = {"APPROVED": "approved", "DENIED": "denied", "TIMED_OUT": "not approved in time",
            "CANCELLED": "cancelled with the run"}.get(state, state.lower())  # fmt: skip
    by = f" by {approval['decided_by']}" if approval.get("decided_by") else ""
    note = f": {approval['note']}" if approval.get("note") else ""
    return f"{head} {mark} {approval['call']} {verb}{by}{note}"


class _Lines:
    """Step lines as a run goes on. On a terminal, the working step has one line that keeps
    its elapsed time current (rewritten in place); every step ends with one permanent line."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._live = False

    def say(self, text: str) -> None:
        self._clear()
        typer.echo(text)

    def working(self, agent: str, seconds: float) -> None:
        if self.tty:
            sys.stdout.write(f"\r\x1b[2K  ▶ {agent:<10} working…   {seconds:5.1f}s")
            sys.stdout.flush()
            self._live = True

    def _clear(self) -> None:
        if self._live:
            sys.stdout.write("\r\x1b[2K")
            self._live = False


def _follow(settings: Settings, run_id: str) -> dict[str, Any]:
    """Show the run as it goes, until it ends: each step, tool call, check round and approval
    once. The run's event stream says when to look (`cli/watch.py`); the clock of the working
    step ticks in between."""
    lines = _Lines()
    seen: dict[str, tuple[str, int]] = {}
    shown: set[str] = set()
    since: dict[str, float] = {}  # when this CLI first saw each step working
    status = ""
    started = time.monotonic()
    watch = RunWatch(settings, run_id)
    try:
        while True:
            run = request(settings, "GET", f"/runs/{run_id}")
            working = None
            for agent, call, approval in _calls_as_they_went(run):
                if approval is not None:
                    decision = f"approval/{approval['call_id']}/{approval['state']}"
                    if decision not in shown:
                        shown.add(decision)
                        lines.say(_approval_line(approval))
                    if approval["state"] in REFUSED:
                        continue  # its result is the refusal just shown
                if call.get("status") == "COMPLETED" and call["call_id"] not in shown:
                    shown.add(call["call_id"])
                    lines.say(_call_line(agent, call))
            for agent, round_ in _check_rounds(run):
                if f"{agent}/checks/{round_['round']}" not in shown:
                    shown.add(f"{agent}/checks/{round_['round']}")
                    lines.say(_round_line(agent, round_))
            for step in run["steps"]:
                key = (step["status"], step["attempt"])
                if step["status"] == "RUNNING":
                    working = step["agent"]
                    since.setdefault(step["agent"], time.monotonic())
                if seen.get(step["agent"]) != key:
                    seen[step["agent"]] = key
                    if step["status"] not in ("RUNNING", "WAITING_FOR_APPROVAL") or not lines.tty:
                        lines.say(_step_line(step))
            if run["status"] != status:
                status = run["status"]
                if status == "WAITING_FOR_BUDGET":
                    lines.say(
                        f"  paused: {run.get('error')}\n"
                        f"  raise it with: crewline budget {run_id} <usd>"
                    )
            if run["status"] in TERMINAL_STATUSES:
                elapsed = time.monotonic() - started
                lines.say(f"  run {run['status']} in {elapsed:.1f}s, spent {_spend(run)}")
                return run  # type: ignore[no-any-return]
            while not watch.changed(wait=0.1):  # the clock ticks every 0.1 s between looks
                if working is not None:
                    lines.working(working, time.monotonic() - since[working])
    finally:
        watch.close()


def _checks_line(run: dict[str, Any]) -> str | None:
    checks = run.get("checks")
    if not checks:
        return None
    if checks["status"] == "not run":
        return f"checks: not run — {checks.get('why')}"
    rounds = f" after {checks['rounds']} rounds" if checks["rounds"] > 1 else ""
    return f"checks: {checks['status']} ({checks['passed']}/{checks['total']} passed{rounds})"


def _print_outcome(settings: Settings, run: dict[str, Any]) -> int:
    line = _checks_line(run)
    if line:
        typer.echo(f"  {line}")
    if run["status"] == "COMPLETED":
        typer.echo("\n" + (run.get("final_answer") or ""))
        if run["artifacts"]:
            # Where the files are is the API's business (another directory, another machine):
            # the CLI fetches them from it.
            typer.echo(f"\nArtifacts ({len(run['artifacts'])}), kept by the API:")
            for artifact in run["artifacts"]:
                typer.echo(f"  {artifact['path']}  ({artifact['size_bytes']} bytes)")
            typer.echo(f"  fetch them: crewline artifacts {run['run_id']} --download DIR")
        if run.get("shadow"):
            shadow = run["shadow"]
            alerts = [d for d in shadow["divergences"] if d["alert"]]
            verdict = (
                f"diverged at {', '.join(d['agent'] for d in alerts)}" if alerts
                else ("no divergence" if shadow["divergences"] else "not compared yet")
            )  # fmt: skip
            state = shadow["status"].lower()
            typer.echo(f"\nShadow {shadow['run_id']} on {shadow['version']}: {state}, {verdict}")
        if run.get("intents"):
            typer.echo("\nDry run — nothing was written; the tools would have:")
            for intent in run["intents"]:
                typer.echo(f"  {intent['summary']}   ({intent['url']})")
        if run.get("provider") == "scripted":
            typer.echo("\nNOTE: LLM_PROVIDER=scripted — canned offline answers, not a real model.")
        return 0
    agent = f" at {run['failed_agent']}" if run.get("failed_agent") else ""
    reason = run.get("error") or (
        "cancelled" if run["status"] == "CANCELLED" else "no reason given"
    )
    typer.echo(f"\nrun {run['status']}{agent}: {reason}", err=True)
    return 1


def run(
    query: Annotated[str, typer.Argument(help="What the agents should build or answer")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the run id and exit")] = False,
    budget: Annotated[str | None, typer.Option("--budget", help="Budget in USD, e.g. 0.50")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Record what tools would do (no files, no writes)")
    ] = False,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            "--approve",
            metavar="TOOL",
            help="Ask a person before each call of this tool (repeatable): crewline approve",
        ),
    ] = None,
) -> None:
    """Start a run and follow it step by step."""
    settings = Settings()
    body: dict[str, Any] = {"query": query, "dry_run": dry_run}
    if approve:
        body["approve"] = approve
    if budget is not None:
        body["budget_usd"] = budget
    accepted = request(settings, "POST", "/runs", json=body)
    run_id = accepted["run_id"]
    if no_wait:
        typer.echo(run_id)
        exit_hard(0)
    typer.echo(f"run {run_id} started — Web UI: {accepted['links']['temporal_ui']}")
    if accepted.get("trace_id"):
        typer.echo(f"  {_trace(accepted)}")
    try:
        final = _follow(settings, run_id)
    except KeyboardInterrupt:
        typer.echo(f"\ndetached; the run goes on. Follow it with: crewline status {run_id}")
        exit_hard(130)
    exit_hard(_print_outcome(settings, final))


def status(run_id: str) -> None:
    """Show one run: status, steps, answer, artifacts."""
    settings = Settings()
    found = request(settings, "GET", f"/runs/{run_id}")
    typer.echo(f"{found['run_id']}  {found['status']}  {found['query']!r}")
    if found.get("trace_id"):
        typer.echo(f"  {_trace(found)}")
    for step in found["steps"]:
        typer.echo(_step_line(step))
        for agent, call, approval in _calls_as_they_went(found):
            if agent != step["agent"]:
                continue
            if approval is not None:
                typer.echo(_approval_line(approval))
            if approval is None or approval["state"] not in (*REFUSED, "PENDING"):
                typer.echo(_call_line(agent, call))
        if isinstance(step.get("checks"), dict):
            for round_ in step["checks"].get("rounds", []):
                typer.echo(_round_line(step["agent"], round_))
        if step.get("stop_reason"):
            typer.echo(f"    {step['agent']:<10} ■ {step['stop_reason']}")
    if found["status"] in TERMINAL_STATUSES:
        exit_hard(_print_outcome(settings, found))
    exit_hard(0)


def artifacts(
    run_id: str,
    download: Annotated[
        Path | None, typer.Option("--download", help="Write the files under this directory")
    ] = None,
) -> None:
    """List a run's artifacts, or download them from the API (from any machine)."""
    settings = Settings()
    listed = request(settings, "GET", f"/runs/{run_id}/artifacts")
    if not listed:
        typer.echo(f"{run_id} has no artifacts")
        exit_hard(0)
    for artifact in listed:
        digest = artifact["sha256"][:12]
        line = f"{artifact['path']}  ({artifact['size_bytes']} bytes, sha256 {digest})"
        if download is not None:
            target = _inside(download, artifact["path"])
            body = request(settings, "GET", artifact["url"], expect_json=False, raw=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            line += f"  → {target}"
        typer.echo(line)
    exit_hard(0)


def _inside(root: Path, relative: str) -> Path:
    """`relative` under `root`, refusing anything that would land outside it."""
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        fail(f"refusing to write {relative!r} outside {root}")
    return target


def list_runs(
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 20,
) -> None:
    """List runs, newest first."""
    settings = Settings()
    params: dict[str, Any] = {"limit": limit}
    if status_filter:
        params["status"] = status_filter.upper()
    page = request(settings, "GET", "/runs", params=params)
    for item in page["items"]:
        created = item["created_at"][:19].replace("T", " ")
        typer.echo(f"{item['run_id']}  {item['status']:<10} {created}  {item['query'][:60]!r}")
    typer.echo(f"({len(page['items'])} of {page['total']})")
    exit_hard(0)


def cancel(run_id: str) -> None:
    """Cancel a run; finished steps and their outputs are kept."""
    settings = Settings()
    request(settings, "POST", f"/runs/{run_id}/cancel")
    typer.echo(f"cancel requested for {run_id}")
    exit_hard(0)


def approve(
    run_id: str,
    call_id: Annotated[
        str | None,
        typer.Argument(
            help="The waiting call (`crewline status RUN_ID` shows it); optional "
            "when the run has one waiting call"
        ),
    ] = None,
    deny: Annotated[bool, typer.Option("--deny", help="Refuse the call")] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (a denial's reason goes to the agent)")
    ] = None,
) -> None:
    """Approve (or --deny) a tool call that waits for a person; the run goes on."""
    settings = Settings()
    waiting = request(settings, "GET", f"/runs/{run_id}/approvals")
    if call_id is None:
        if not waiting:
            fail(f"run {run_id} has no tool call waiting for approval")
        if len(waiting) > 1:
            listed = "\n".join(_approval_line(a) for a in waiting)
            fail(f"run {run_id} has {len(waiting)} calls waiting; name one:\n{listed}")
        call_id = waiting[0]["call_id"]
    body: dict[str, Any] = {"decision": "deny" if deny else "approve"}
    if reason:
        body["reason"] = reason
    sent = request(settings, "POST", f"/runs/{run_id}/approvals/{call_id}", json=body)
    call = next((a["call"] for a in waiting if a["call_id"] == call_id), call_id)
    verb = "denied" if deny else "approved"
    if sent["applied"]:
        typer.echo(f"{verb} {call} ({run_id}, call {call_id}); the run goes on")
    else:
        typer.echo(
            f"{verb} {call} ({run_id}, call {call_id}); the run records it when a worker "
            "picks it up (none has yet)"
        )
    exit_hard(0)


def budget(run_id: str, usd: Annotated[str, typer.Argument(help="New budget in USD")]) -> None:
    """Raise a run's budget; a run paused for budget resumes."""
    settings = Settings()
    state = request(settings, "POST", f"/runs/{run_id}/budget", json={"budget_usd": usd})
    typer.echo(f"{run_id}: budget ${state['budget_usd']}, spent so far ${state['spent_usd']}")
    exit_hard(0)


def costs_table(by: str, items: list[dict[str, Any]], total_usd: Decimal) -> str:
    """`crewline costs`' table: a line per group, the total, and what "estimated" means."""
    lines = [
        f"{by:<28} {'calls':>6} {'prompt tok':>11} {'compl tok':>10} {'USD':>14} "
        f"{'of which estimated':>24}"
    ]
    for item in items:
        cut = f"{Decimal(item['estimated_usd']):.6f} ({item['estimated_calls']} calls)"
        lines.append(
            f"{str(item['key'])[:28]:<28} {item['calls']:>6} {item['prompt_tokens']:>11} "
            f"{item['completion_tokens']:>10} {Decimal(item['total_usd']):>14.6f} {cut:>24}"
        )
    lines.append(f"{'total':<28} {'':>6} {'':>11} {'':>10} {total_usd:>14.6f}")
    if any(item["estimated_calls"] for item in items):
        lines.append(
            "estimated: usage the provider did not report — a call cut off (timeout, lost "
            "worker, cancel) is charged its worst case; the scripted provider's counts are "
            "estimates"
        )
    return "\n".join(lines)


def costs(
    by: Annotated[
        str, typer.Option("--by", help="agent | model | day | run | version | key")
    ] = "agent",
    since: Annotated[str | None, typer.Option(help="ISO date/time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time, exclusive")] = None,
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Spend grouped by agent, model, day, run, version or API key."""
    settings = Settings()
    params: dict[str, Any] = {"group_by": by, "limit": limit}
    if since:
        params["since"] = since
    if until:
        params["until"] = until
    report = request(settings, "GET", "/costs", params=params)
    typer.echo(costs_table(by, report["items"], Decimal(report["total_usd"])))
    exit_hard(0)


def health() -> None:
    """API, database, Temporal and LLM checks, and the workers' circuit breakers."""
    settings = Settings()
    with api_client(settings) as client:
        try:
            report = client.get("/health").json()
        except httpx.ConnectError:
            fail(f"cannot reach the crewline API at {settings.resolved_api_url}")
    for part in ("api", "database", "temporal", "workers", "llm", "sandbox", "reconciler"):
        info = report.get(part)
        if info is None:
            continue
        detail = info.get("error") or info.get("provider") or info.get("address") or ""
        if part == "sandbox" and info["ok"]:
            detail = ", ".join(info.get("interpreters", []))
        if part == "workers" and info["ok"]:
            detail = f"active {info.get('active_version') or 'none'}"
        typer.echo(f"{part:<9} {'ok' if info['ok'] else 'FAIL':<5} {detail}")
    for b in report["breakers"]:
        typer.echo(
            f"breaker   {b['provider']}/{b['model']} {b['state']} "
            f"(failures in a row: {b['consecutive_failures']}, opened {b['times_opened']}x, "
            f"worker {b['worker']})"
        )
    exit_hard(0 if report["status"] == "ok" else 1)
