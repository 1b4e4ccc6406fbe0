"""Layer 3: code compared by what it does. Both versions' files go through the same acceptance
checks in the sandbox — the union of both runs' Executor checks — and the outcomes are compared:
a check that passes on the active version's files and fails on the candidate's is a regression,
whatever the code looks like. Renamed identifiers and restructured control flow pass the same
checks; an off-by-one that a check exercises does not.

A check that names a file only one version wrote (`python test_game.py` when the candidate called
it `tests.py`) cannot compare them and is left out, saying so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from crewline.sandbox import Outcome, Sandbox
from versioning.divergence.detector import Finding

MAX_CHECKS = 12


@dataclass
class Behaviour:
    findings: list[Finding] = field(default_factory=list)
    compared: int = 0
    notes: list[str] = field(default_factory=list)


def _named_files(command: str, files: Mapping[str, bytes]) -> set[str]:
    words = set(re.findall(r"[\w./-]+", command))
    return {path for path in files if path in words or path.rsplit("/", 1)[-1] in words}


def _tail(outcome: Outcome) -> str:
    lines = [x for x in outcome.output.strip().splitlines() if x.strip()]
    return (lines[-1][:140] if lines else "") or (outcome.limit or f"exit {outcome.exit_code}")


async def compare_checks(
    sandbox: Sandbox,
    commands: list[str],
    files_a: Mapping[str, bytes],
    files_b: Mapping[str, bytes],
) -> Behaviour:
    done = Behaviour()
    if not commands:
        done.notes.append("behaviour: no acceptance checks to run")
        return done
    if not files_a or not files_b:
        done.notes.append("behaviour: a version wrote no files")
        return done
    for command in list(dict.fromkeys(commands))[:MAX_CHECKS]:
        named_a, named_b = _named_files(command, files_a), _named_files(command, files_b)
        if named_a != named_b:
            done.notes.append(f"behaviour: `{command[:60]}` names files only one version wrote")
            continue
        on_a = await sandbox.run(command, files_a)
        on_b = await sandbox.run(command, files_b)
        done.compared += 1
        if on_a.passed and not on_b.passed:
            done.findings.append(
                Finding(
                    "behaviour", "check-fails", 0.95,
                    f"`{command[:80]}` passes on the active version's files and fails on the "
                    f"candidate's ({on_b.limit or f'exit {on_b.exit_code}'}: {_tail(on_b)})",
                )
            )  # fmt: skip
    return done
