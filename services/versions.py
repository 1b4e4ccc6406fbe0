"""Versions: snapshots (of the server's tree, or a verified zip upload), the active version, diffs,
activation, rollback, history and deletion.

The rules live in `versioning/` (`activation.py` says what is refused and why); this service
checks the caller's scope, keeps the slow parts (hashing, zip verification) off the event loop and
turns an unreachable Temporal into `Unavailable` with nothing changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool
from temporalio.service import RPCError

from services import Context
from services.access import Principal, require
from services.errors import Conflict, NotFound, ServiceError, Unavailable, invalid, versioning_on
from services.version_models import (
    ActivationOut,
    ChangeIn,
    FileEntry,
    HistoryOut,
    RollbackIn,
    SnapshotOut,
    VersionDetail,
    VersionDiffOut,
    VersionList,
    VersionSummary,
    WorkerOut,
)
from versioning import activation, deployment, registry, shadow
from versioning.activation import ActivationResult, VersionError
from versioning.bundle import Bundle, BundleError, check_no_secrets, collect, default_source, read
from versioning.bundle import write as write_bundle
from versioning.diff import diff_versions

T = TypeVar("T")


async def temporal(ctx: Context, call: Awaitable[T]) -> T:
    """Await a Temporal call; a refused version change keeps its status, an unreachable or
    failing Temporal is `Unavailable` with nothing changed."""
    try:
        return await call
    except VersionError as exc:
        error = ServiceError(str(exc))
        error.status_code = exc.status
        raise error from None
    except (RPCError, RuntimeError) as exc:
        why = exc.message if isinstance(exc, RPCError) else "unreachable"
        raise Unavailable(
            f"Temporal at {ctx.settings.temporal_address}: {why}; nothing was changed",
            retry_after_s=5,
        ) from None


def summary(
    row: registry.VersionRow, usage: registry.Usage, active: str | None, live: int
) -> VersionSummary:
    return VersionSummary(
        id=row.id, created_at=row.created_at, source=row.source,
        uploaded=row.source == registry.UPLOADED, note=row.note, files=row.files,
        prompts=len(row.manifest().prompts), size_bytes=row.size_bytes, active=row.id == active,
        live_workers=live, runs=usage.runs, spend_usd=usage.spend_usd,
        shadow_spend_usd=usage.shadow_spend_usd,
    )  # fmt: skip


def _out(result: ActivationResult, reason: str | None, by: str | None) -> ActivationOut:
    return ActivationOut(**dataclasses.asdict(result), reason=reason, by=by)


class Versions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def known(self, version_id: str) -> registry.VersionRow:
        row = await self.ctx.db(registry.get, version_id)
        if row is None:
            raise NotFound(f"version {version_id!r} not found")
        return row

    async def listing(self, principal: Principal) -> VersionList:
        """Every snapshot, newest first: which is active, live workers, runs served, spend."""
        require(principal, "versions.read")
        ctx = self.ctx
        state = await temporal(ctx, activation.reconcile(ctx.temporal, ctx.settings, ctx.engine))
        live = await temporal(ctx, deployment.live_workers(ctx.temporal, ctx.settings))
        rows = await ctx.db(registry.list_versions)
        usage = await ctx.db(registry.usage)
        config = await ctx.db(shadow.get_config)
        spent = await ctx.db(shadow.spent_today)
        items = [
            summary(r, usage.get(r.id, registry.Usage()), state.current, len(live.get(r.id, [])))
            for r in rows
        ]
        for item in items:
            item.candidate = item.id == config.candidate
        return VersionList(
            deployment=ctx.settings.deployment_name,
            active=state.current,
            candidate=config.candidate,
            shadow_rate=config.rate,
            shadow_paused=(shadow.pause_reason(ctx.settings, spent) if config.candidate else None),
            deployment_token=state.conflict_token.hex(),
            items=items,
        )

    async def snapshot(
        self, principal: Principal, *, note: str | None = None, upload: bytes | None = None
    ) -> SnapshotOut:
        """Snapshot the server's own agent code, or store a snapshot zip built elsewhere
        (verified against its manifest and checked for secrets, off the event loop)."""
        require(principal, "versions.change")
        versioning_on(self.ctx.settings)
        settings = self.ctx.settings

        def build() -> tuple[Bundle, str]:
            if upload is not None:
                found = read(upload)
                check_no_secrets(found.contents, settings)
                return found, registry.UPLOADED
            where = default_source()
            return collect(where, settings), str(where)

        try:
            bundle, source = await run_in_threadpool(build)
        except BundleError as exc:
            raise invalid(("body",), str(exc)) from None

        def store() -> tuple[registry.VersionRow, bool]:
            known = registry.list_versions(self.ctx.engine)
            if len(known) >= settings.max_versions and bundle.id not in {v.id for v in known}:
                raise Conflict(
                    f"{len(known)} versions are stored, the limit (MAX_VERSIONS); delete ones "
                    "no run uses with `crewline version delete ID` first (nothing was stored)"
                )
            write_bundle(bundle, settings.snapshots_dir)
            return registry.register(self.ctx.engine, bundle, source=source, note=note)

        row, created = await run_in_threadpool(store)
        out = summary(row, registry.Usage(), None, 0)
        return SnapshotOut(**out.model_dump(), created=created, skipped=bundle.skipped)

    async def detail(self, principal: Principal, version_id: str) -> VersionDetail:
        """The manifest (files and hashes, model settings, tools) and who serves it now."""
        require(principal, "versions.read")
        ctx = self.ctx
        row = await self.known(version_id)
        state = await temporal(ctx, deployment.describe(ctx.temporal, ctx.settings))
        live = (await temporal(ctx, deployment.live_workers(ctx.temporal, ctx.settings))).get(
            version_id, []
        )
        usage = (await ctx.db(registry.usage)).get(version_id, registry.Usage())
        manifest = row.manifest()
        return VersionDetail(
            **summary(row, usage, state.current, len(live)).model_dump(),
            files_list=[FileEntry(path=p, sha256=h) for p, h in manifest.files.items()],
            model_settings=manifest.model_settings.model_dump(),
            tools=[t.model_dump() for t in manifest.tools],
            workers=[
                WorkerOut(identity=w.identity, host=w.host, last_heartbeat=w.last_heartbeat)
                for w in live
            ],
        )

    async def bundle_path(self, principal: Principal, version_id: str) -> Path:
        require(principal, "versions.read")
        await self.known(version_id)
        path = self.ctx.settings.snapshots_dir / f"{version_id}.zip"
        if not path.is_file():
            raise NotFound(f"{version_id}.zip is not on this host")
        return path

    async def diff(
        self, principal: Principal, a: str, b: str, *, all_files: bool = False
    ) -> VersionDiffOut:
        """Which files, prompts, model settings and tools changed from a to b; prompt diffs."""
        require(principal, "versions.read")
        row_a, row_b = await self.known(a), await self.known(b)
        found = await run_in_threadpool(
            diff_versions, a, row_a.manifest(), b, row_b.manifest(),
            self.ctx.settings.snapshots_dir, all_files=all_files,
        )  # fmt: skip
        return VersionDiffOut(
            a=a, b=b, added=found.added, removed=found.removed, changed=found.changed,
            prompts_changed=found.prompts_changed,
            model_settings={k: list(v) for k, v in found.model_settings.items()},
            tools={k: list(v) for k, v in found.tools.items()}, diffs=found.diffs,
            note=found.note,
        )  # fmt: skip

    async def history(self, principal: Principal, limit: int = 100) -> HistoryOut:
        """Every change of the current version, newest first: when, from, to, by whom, why."""
        require(principal, "versions.read")
        rows = await self.ctx.db(registry.history, limit)
        return HistoryOut(
            items=[
                ActivationOut(
                    action=r.action,
                    from_version=r.from_version,
                    to_version=r.to_version,
                    changed=True,
                    moved_runs=r.moved_runs,
                    at=r.at,
                    reason=r.reason,
                    by=r.by,
                )
                for r in rows
            ]
        )

    async def activate(
        self, principal: Principal, version_id: str, body: ChangeIn | None = None
    ) -> ActivationOut:
        """Make this the current version: new runs start on it; open runs stay on theirs unless
        `move_inflight`. Conflict if no worker serves it, or the deployment changed meanwhile."""
        require(principal, "versions.change")
        versioning_on(self.ctx.settings)
        body = body or ChangeIn()
        ctx = self.ctx
        await self.known(version_id)
        result = await temporal(
            ctx,
            activation.activate(
                ctx.temporal, ctx.settings, ctx.engine, version_id, reason=body.reason,
                by=principal.name, move_inflight=body.move_inflight, force=body.force,
                if_token=bytes.fromhex(body.if_token) if body.if_token else None,
            ),
        )  # fmt: skip
        return _out(result, body.reason, principal.name)

    async def rollback(self, principal: Principal, body: RollbackIn) -> ActivationOut:
        """Back to the version active before the current one; with `from_version`, a retry
        that already happened answers the same and rolls back nothing more."""
        require(principal, "versions.change")
        versioning_on(self.ctx.settings)
        ctx = self.ctx
        result = await temporal(
            ctx,
            activation.rollback(
                ctx.temporal, ctx.settings, ctx.engine, from_version=body.from_version,
                reason=body.reason, by=principal.name, move_inflight=body.move_inflight,
                force=body.force, if_token=bytes.fromhex(body.if_token) if body.if_token else None,
            ),
        )  # fmt: skip
        return _out(result, body.reason, principal.name)

    async def can_roll_back(self) -> bool:
        """Whether a rollback has a version to return to (the dashboard offers it only then)."""
        ctx = self.ctx
        try:
            state = await deployment.describe(ctx.temporal, ctx.settings)
        except (RPCError, RuntimeError):
            return False
        rows = await ctx.db(registry.history, 10_000)
        return len(registry.active_stack(reversed(rows), state.current)) >= 2

    async def delete(self, principal: Principal, version_id: str) -> None:
        """Delete a snapshot that is not active, not the candidate and pinned by no open run."""
        require(principal, "versions.change")
        versioning_on(self.ctx.settings)
        ctx = self.ctx
        candidate = (await ctx.db(shadow.get_config)).candidate
        await temporal(
            ctx,
            activation.check_deletable(
                ctx.temporal, ctx.settings, ctx.engine, version_id, candidate=candidate
            ),
        )
        (ctx.settings.snapshots_dir / f"{version_id}.zip").unlink(missing_ok=True)
        await ctx.db(registry.delete, version_id)

    async def bootstrap(self) -> ActivationResult | None:
        """On a fresh deployment (no current version) whose registry holds exactly one version,
        make it current once a worker serves it — the control plane's job, not a worker's (a
        cluster's first worker snapshots its image's agents; this activates them). None if there
        is nothing to do; with more than one version, a person chooses."""
        ctx = self.ctx
        if not ctx.settings.versioning_enabled:
            return None
        state = await deployment.describe(ctx.temporal, ctx.settings)
        if state.current is not None:
            return None
        known = [r.id for r in await ctx.db(registry.list_versions)]
        if len(known) != 1:
            return None
        live = await deployment.live_workers(ctx.temporal, ctx.settings)
        serving = [v for v in known if live.get(v)]
        if not serving:
            return None
        try:
            return await activation.bootstrap(
                ctx.temporal, ctx.settings, ctx.engine, serving[0], by="crewline (first start)"
            )
        except VersionError as exc:
            raise Conflict(str(exc)) from None
