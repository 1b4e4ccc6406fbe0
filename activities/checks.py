"""Acceptance checks: the Executor's commands, run in the sandbox against the Coder's files.

A round runs every check, each in its own fresh copy of the workspace (the files written, or in
a dry run the files it would have written), and records each command's exit code, the limit it
hit if any, and the tail of its output. The Coder's step keeps every round; what the next turn
and the Finalizer are told, and the line appended to the final answer, are written from that
record — so nobody is told a check passed, or ran, when it did not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crewline.sandbox import Outcome, Sandbox

TAIL_CHARS = 1500
PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"


def result_of(outcome: Outcome) -> dict[str, Any]:
    return {
        "command": outcome.command,
        "exit_code": outcome.exit_code,
        "passed": outcome.passed,
        "limit": outcome.limit,
        "seconds": round(outcome.duration_s, 2),
        "output": outcome.tail(TAIL_CHARS),
    }


async def run_round(
    sandbox: Sandbox, commands: list[str], files: Mapping[str, bytes]
) -> list[dict[str, Any]]:
    return [result_of(await sandbox.run(command, files)) for command in commands]


def status_of(record: dict[str, Any] | None) -> str:
    return str((record or {}).get("status") or NOT_RUN)


def round_summary(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        mark = "✓" if r["passed"] else "✗"
        how = r["limit"] or f"exit {r['exit_code']}"
        lines.append(f"{mark} `{r['command']}` → {how}")
    return "\n".join(lines)


def feedback(results: list[dict[str, Any]], round_no: int, rounds: int) -> str:
    """What the Coder is told after a failed round: each failure with its output's tail."""
    failed = [r for r in results if not r["passed"]]
    parts = [f"The acceptance checks failed (round {round_no} of {rounds}):"]
    for r in failed:
        how = r["limit"] or f"exit code {r['exit_code']}"
        parts.append(f"\n$ {r['command']}\n({how})\n{r['output'] or '(no output)'}")
    parts.append(
        "\nFix the files with write_file so that every check passes (you may run_command to "
        "try), then answer again with a short summary."
    )
    return "\n".join(parts)


def describe(record: dict[str, Any] | None) -> str:
    """The checks for the Finalizer's prompt and for people: their status and last round."""
    if not record:
        return "not run: there were no acceptance checks"
    status = status_of(record)
    if status == NOT_RUN:
        return f"not run: {record.get('why') or 'no reason recorded'}"
    last = record["rounds"][-1]
    passed = sum(1 for r in last["results"] if r["passed"])
    rounds = len(record["rounds"])
    head = f"{status}: {passed} of {len(last['results'])} passed"
    head += f" after {rounds} round{'s' if rounds > 1 else ''} in the sandbox"
    return f"{head}\n{round_summary(last['results'])}"


def footer(record: dict[str, Any] | None, dry_run: bool) -> str:
    """The line under the final answer that says what was verified — from the record, whatever
    the model wrote."""
    status = status_of(record)
    where = " (dry run: on the files it would have written)" if dry_run else ""
    if status == NOT_RUN:
        why = (record or {}).get("why") or "there were no acceptance checks"
        return f"\n\n---\nChecks: not run — {why}."
    last = (record or {})["rounds"][-1]["results"]
    passed = sum(1 for r in last if r["passed"])
    failing = "; ".join(
        f"`{r['command']}` {r['limit'] or 'exited ' + str(r['exit_code'])}"
        for r in last
        if not r["passed"]
    )
    text = f"\n\n---\nChecks: {status} — {passed} of {len(last)} passed in the sandbox{where}"
    return text + (f"; failing: {failing}." if failing else ".")
