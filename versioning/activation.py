"""Activate, roll back, bootstrap and delete versions: the rules, in one place for API and CLI.

- Activating needs a live worker of the target version (Temporal's worker heartbeats): routing new
  runs to a version nobody serves would leave them waiting forever. Nothing changes otherwise.
- Changes go through Temporal with the conflict token read just before (or one the caller read
  earlier, `if_token`), so of two concurrent changes exactly one wins; the other is a conflict
  and writes no history.
- Rollback walks the activation history back (`registry.active_stack`); given `from_version` it
  is idempotent: a retried rollback whose first attempt already happened answers with that
  rollback instead of rolling back again.
- Moving in-flight runs re-pins them to the target, whose workflow code then replays their
  history: refused when `workflows/` differs between the two versions, unless forced.
- Activating the shadow candidate promotes it: shadowing stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from crewline.settings import Settings
from records.statuses import TERMINAL as TERMINAL_STATUSES
from records.tables import Run
from versioning import deployment, registry, shadow
from versioning.deployment import DeploymentConflictError, DeploymentState


class VersionError(Exception):
    """A refused version operation; `status` is the HTTP status that fits it."""

    status = 409


class UnknownVersionError(VersionError):
    status = 404


class NoLiveWorkerError(VersionError):
    pass


class ActivationConflictError(VersionError):
    pass


@dataclass(frozen=True)
class ActivationResult:
    action: str
    from_version: str | None
    to_version: str
    changed: bool
    moved_runs: int = 0
    at: datetime | None = None


def _known(engine: Engine, version_id: str) -> registry.VersionRow:
    row = registry.get(engine, version_id)
    if row is None:
        raise UnknownVersionError(f"version {version_id!r} not found (see `crewline version list`)")
    return row


def _workflows_differ(engine: Engine, a: str, b: str) -> list[str]:
    files_a, files_b = (_known(engine, v).manifest().files for v in (a, b))
    paths = {p for p in (*files_a, *files_b) if p.startswith("workflows/")}
    return sorted(p for p in paths if files_a.get(p) != files_b.get(p))


async def reconcile(client: Client, settings: Settings, engine: Engine) -> DeploymentState:
    """Temporal's state; a current version the history does not know about is recorded as
    `external` (set with the temporal CLI, or a crash between the change and its history row)."""
    state = await deployment.describe(client, settings)
    rows = registry.history(engine, limit=1)
    last = rows[0].to_version if rows else None
    if state.current is not None and state.current != last:
        registry.record_activation(
            engine, action="external", from_version=last, to_version=state.current,
            reason="current version changed outside crewline",
        )  # fmt: skip
    return state


async def _change(
    client: Client,
    settings: Settings,
    engine: Engine,
    target: str,
    state: DeploymentState,
    *,
    action: str,
    reason: str | None,
    by: str | None,
    move_inflight: bool,
    force: bool,
    if_token: bytes | None,
) -> ActivationResult:
    leaving = state.current
    if leaving == target:
        return ActivationResult(action, leaving, target, changed=False)
    if not (await deployment.live_workers(client, settings)).get(target):
        raise NoLiveWorkerError(
            f"no worker is serving {target}: start one with `crewline worker --version {target}`"
            " and try again (nothing was changed)"
        )
    if move_inflight and leaving is not None and not force:
        differ = _workflows_differ(engine, leaving, target)
        if differ:
            raise VersionError(
                f"cannot move in-flight runs from {leaving} to {target}: their workflow code "
                f"differs ({', '.join(differ)}), so moved runs would fail to replay; cancel them "
                "instead, or force the move (nothing was changed)"
            )
    token = state.conflict_token if if_token is None else if_token
    try:
        await deployment.set_current(client, settings, target, token, identity=by or "crewline")
    except DeploymentConflictError:
        # Lost a race: if the winner made `target` current (the reconciler's first-start
        # activation, the same request sent twice), what was asked for holds.
        if if_token is None and (await deployment.describe(client, settings)).current == target:
            return ActivationResult(action, leaving, target, changed=False)
        raise ActivationConflictError(
            "the deployment changed while this request was made (another activation or "
            "rollback won); read `crewline version list` and try again (nothing was changed)"
        ) from None
    moved = 0
    if move_inflight and leaving is not None:
        runs = await deployment.open_runs_on(client, settings, leaving)
        moved = await deployment.pin_runs(client, settings, runs, target)
    row = registry.record_activation(
        engine, action=action, from_version=leaving, to_version=target, reason=reason, by=by,
        moved_runs=moved,
    )  # fmt: skip
    if shadow.get_config(engine).candidate == target:  # promoted: it cannot shadow itself
        shadow.set_config(engine, None, 0.0, by)
    return ActivationResult(action, leaving, target, changed=True, moved_runs=moved, at=row.at)


async def activate(
    client: Client,
    settings: Settings,
    engine: Engine,
    version_id: str,
    *,
    reason: str | None = None,
    by: str | None = None,
    move_inflight: bool = False,
    force: bool = False,
    if_token: bytes | None = None,
) -> ActivationResult:
    _known(engine, version_id)
    state = await reconcile(client, settings, engine)
    return await _change(
        client, settings, engine, version_id, state, action="activate", reason=reason, by=by,
        move_inflight=move_inflight, force=force, if_token=if_token,
    )  # fmt: skip


async def rollback(
    client: Client,
    settings: Settings,
    engine: Engine,
    *,
    from_version: str | None = None,
    reason: str | None = None,
    by: str | None = None,
    move_inflight: bool = False,
    force: bool = False,
    if_token: bytes | None = None,
) -> ActivationResult:
    state = await reconcile(client, settings, engine)
    rows = registry.history(engine, limit=10_000)
    if from_version is not None and state.current != from_version:
        last = rows[0] if rows else None
        if last is not None and last.action == "rollback" and last.from_version == from_version:
            # This rollback already happened (a retried request): answer it again, do no more.
            return ActivationResult(
                "rollback", from_version, last.to_version, changed=False,
                moved_runs=last.moved_runs, at=last.at,
            )  # fmt: skip
        raise VersionError(
            f"the current version is {state.current or 'none'}, not {from_version}; "
            "nothing was rolled back"
        )
    stack = registry.active_stack(reversed(rows), state.current)
    if len(stack) < 2:
        raise VersionError(
            "there is no previous version to roll back to (see `crewline version history`)"
        )
    return await _change(
        client, settings, engine, stack[-2], state, action="rollback", reason=reason, by=by,
        move_inflight=move_inflight, force=force, if_token=if_token,
    )  # fmt: skip


async def bootstrap(
    client: Client, settings: Settings, engine: Engine, version_id: str, *, by: str
) -> ActivationResult | None:
    """Make `version_id` current if the deployment has no current version yet (a fresh data
    directory or cluster), so a newcomer never has to know about versions. Its worker must be
    live. Losing the race to another bootstrapping worker is fine: someone made a version current.
    """
    state = await reconcile(client, settings, engine)
    if state.current is not None:
        return None
    try:
        return await _change(
            client, settings, engine, version_id, state, action="bootstrap",
            reason="first start: no version was active", by=by, move_inflight=False,
            force=False, if_token=None,
        )  # fmt: skip
    except ActivationConflictError:
        return None


async def check_deletable(
    client: Client, settings: Settings, engine: Engine, version_id: str, candidate: str | None
) -> None:
    """Refuse to delete a version that is active, the shadow candidate, or pinned by open runs."""
    _known(engine, version_id)
    state = await deployment.describe(client, settings)
    if version_id in (state.current, state.ramping):
        raise VersionError(f"{version_id} is the active version; activate another one first")
    if version_id == candidate:
        raise VersionError(f"{version_id} is the shadow candidate; stop shadowing first")
    open_runs = await deployment.open_runs_on(client, settings, version_id)
    with Session(engine) as session:
        stmt = select(Run.run_id).where(
            Run.version == version_id, col(Run.status).not_in(TERMINAL_STATUSES)
        )
        open_runs += [r for r in session.exec(stmt) if r not in open_runs]
    if open_runs:
        shown = ", ".join(open_runs[:5]) + (" …" if len(open_runs) > 5 else "")
        raise VersionError(
            f"{version_id} is pinned by {len(open_runs)} open run(s) ({shown}); "
            "let them finish or cancel them first"
        )
