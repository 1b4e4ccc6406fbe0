"""`/versions`: snapshots, the active version, activation, rollback, history and diffs.

Thin: the rules live in `versioning/` (activation.py says what is refused and why); handlers map
its errors to status codes. Temporal unreachable is a 503 and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from temporalio.service import RPCError

from api.deps import EngineDep, SettingsDep, TemporalDep
from api.errors import documented, invalid
from api.security import AUTH_RESPONSES, Admin, Reader
from api.version_schemas import (
    VERSION_ID_PATTERN,
    ActivationOut,
    ChangeIn,
    FileEntry,
    HistoryOut,
    RollbackIn,
    SnapshotIn,
    SnapshotOut,
    VersionDetail,
    VersionDiffOut,
    VersionList,
    VersionSummary,
    WorkerOut,
)
from crewline.settings import Settings
from versioning import activation, deployment, registry, shadow
from versioning.activation import ActivationResult, VersionError
from versioning.bundle import (
    MAX_BUNDLE_BYTES,
    Bundle,
    BundleError,
    check_no_secrets,
    collect,
    default_source,
    read,
    write,
)
from versioning.diff import diff_versions

router = APIRouter(prefix="/versions", tags=["versions"], responses=AUTH_RESPONSES)
VersionId = Annotated[str, Path(pattern=VERSION_ID_PATTERN, examples=["snap-4ba2cc33f458"])]
T = TypeVar("T")


async def _temporal(settings: Settings, call: Awaitable[T]) -> T:
    """Await a Temporal call; unreachable or failing Temporal is a 503 with nothing changed."""
    try:
        return await call
    except VersionError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except (RPCError, RuntimeError) as exc:
        why = exc.message if isinstance(exc, RPCError) else "unreachable"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"Temporal at {settings.temporal_address}: {why}; nothing was changed",
        ) from None


def _summary(
    row: registry.VersionRow, usage: registry.Usage, active: str | None, live: int
) -> VersionSummary:
    return VersionSummary(
        id=row.id,
        created_at=row.created_at,
        source=row.source,
        note=row.note,
        files=row.files,
        prompts=len(row.manifest().prompts),
        size_bytes=row.size_bytes,
        active=row.id == active,
        live_workers=live,
        runs=usage.runs,
        spend_usd=usage.spend_usd,
        shadow_spend_usd=usage.shadow_spend_usd,
    )


def _known(engine: EngineDep, version_id: str) -> registry.VersionRow:
    row = registry.get(engine, version_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"version {version_id!r} not found")
    return row


def _out(result: ActivationResult, reason: str | None, by: str | None) -> ActivationOut:
    return ActivationOut(**dataclasses.asdict(result), reason=reason, by=by)


@router.get("", response_model=VersionList, responses=documented(503))
async def list_versions(
    key: Reader, settings: SettingsDep, engine: EngineDep, client: TemporalDep
) -> VersionList:
    """Every snapshot, newest first: which is active, live workers, runs served, spend."""
    state = await _temporal(settings, activation.reconcile(client, settings, engine))
    live = await _temporal(settings, deployment.live_workers(client, settings))
    rows = await run_in_threadpool(registry.list_versions, engine)
    usage = await run_in_threadpool(registry.usage, engine)
    config = await run_in_threadpool(shadow.get_config, engine)
    items = [
        _summary(r, usage.get(r.id, registry.Usage()), state.current, len(live.get(r.id, [])))
        for r in rows
    ]
    for item in items:
        item.candidate = item.id == config.candidate
    return VersionList(
        deployment=settings.deployment_name,
        active=state.current,
        candidate=config.candidate,
        shadow_rate=config.rate,
        shadow_paused=(
            shadow.pause_reason(settings, shadow.spent_today(engine)) if config.candidate else None
        ),
        deployment_token=state.conflict_token.hex(),
        items=items,
    )


async def _read_capped(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"a snapshot upload is at most {limit} bytes"
            )
    return bytes(body)


def _store(
    settings: Settings, engine: EngineDep, bundle: Bundle, source: str, note: str | None
) -> tuple[registry.VersionRow, bool]:
    write(bundle, settings.snapshots_dir)
    return registry.register(engine, bundle, source=source, note=note)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SnapshotOut,
    responses={200: {"description": "this exact content was already a version"}, **documented(413)},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": SnapshotIn.model_json_schema()},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            }
        }
    },
)
async def create_version(
    key: Admin,
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    note: Annotated[str | None, Query(max_length=500, description="for a zip upload")] = None,
) -> SnapshotOut:
    """Snapshot the server's own agent code (JSON body, optional `note`), or store a snapshot
    zip built elsewhere (`crewline version snapshot` uploads one): verified, secret-checked."""
    raw = await _read_capped(request, MAX_BUNDLE_BYTES)
    try:
        if request.headers.get("content-type", "").startswith("application/zip"):
            bundle = read(raw)
            check_no_secrets(bundle.contents, settings)
            source = "upload"
        else:
            note = SnapshotIn.model_validate_json(raw or b"{}").note
            where = default_source()
            bundle = await run_in_threadpool(collect, where, settings)
            source = str(where)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except BundleError as exc:
        raise invalid(("body",), str(exc)) from None
    row, created = await run_in_threadpool(_store, settings, engine, bundle, source, note)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    summary = _summary(row, registry.Usage(), None, 0)
    return SnapshotOut(**summary.model_dump(), created=created, skipped=bundle.skipped)


@router.get("/history", response_model=HistoryOut)
def version_history(
    key: Reader, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> HistoryOut:
    """Every change of the current version, newest first: when, from, to, by whom, why."""
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
            for r in registry.history(engine, limit)
        ]
    )


@router.post("/rollback", response_model=ActivationOut, responses=documented(404, 409, 503))
async def rollback(
    key: Admin, body: RollbackIn, settings: SettingsDep, engine: EngineDep, client: TemporalDep
) -> ActivationOut:
    """Back to the version active before the current one. With `from_version`, a retried
    rollback that already happened answers the same and rolls back nothing more."""
    result = await _temporal(
        settings,
        activation.rollback(
            client, settings, engine, from_version=body.from_version, reason=body.reason,
            by=key.name,
            move_inflight=body.move_inflight, force=body.force,
            if_token=bytes.fromhex(body.if_token) if body.if_token else None,
        ),
    )  # fmt: skip
    return _out(result, body.reason, key.name)


@router.get("/{version_id}", response_model=VersionDetail, responses=documented(404, 503))
async def read_version(
    key: Reader,
    version_id: VersionId,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> VersionDetail:
    """The manifest (files and hashes, model settings, tools) and who serves it now."""
    row = await run_in_threadpool(_known, engine, version_id)
    state = await _temporal(settings, deployment.describe(client, settings))
    live = (await _temporal(settings, deployment.live_workers(client, settings))).get(
        version_id, []
    )
    usage = (await run_in_threadpool(registry.usage, engine)).get(version_id, registry.Usage())
    manifest = row.manifest()
    return VersionDetail(
        **_summary(row, usage, state.current, len(live)).model_dump(),
        files_list=[FileEntry(path=p, sha256=h) for p, h in manifest.files.items()],
        model_settings=manifest.model_settings.model_dump(),
        tools=[t.model_dump() for t in manifest.tools],
        workers=[
            WorkerOut(identity=w.identity, host=w.host, last_heartbeat=w.last_heartbeat)
            for w in live
        ],
    )


@router.get(
    "/{version_id}/bundle",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the snapshot zip"},
        **documented(404),
    },
)
def download_bundle(
    key: Reader, version_id: VersionId, settings: SettingsDep, engine: EngineDep
) -> FileResponse:
    """The snapshot zip (e.g. for a worker on another host: `crewline worker --version ID`)."""
    _known(engine, version_id)
    path = settings.snapshots_dir / f"{version_id}.zip"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{version_id}.zip is not on this host")
    return FileResponse(path, media_type="application/zip", filename=path.name)


@router.get("/{a}/diff/{b}", response_model=VersionDiffOut, responses=documented(404))
def diff(
    key: Reader,
    a: VersionId,
    b: VersionId,
    settings: SettingsDep,
    engine: EngineDep,
    all_files: Annotated[bool, Query(alias="all", description="diff code files too")] = False,
) -> VersionDiffOut:
    """Which files, prompts, model settings and tools changed from a to b; prompt diffs."""
    row_a, row_b = _known(engine, a), _known(engine, b)
    found = diff_versions(
        a, row_a.manifest(), b, row_b.manifest(), settings.snapshots_dir, all_files=all_files
    )
    return VersionDiffOut(
        a=a,
        b=b,
        added=found.added,
        removed=found.removed,
        changed=found.changed,
        prompts_changed=found.prompts_changed,
        model_settings={k: list(v) for k, v in found.model_settings.items()},
        tools={k: list(v) for k, v in found.tools.items()},
        diffs=found.diffs,
        note=found.note,
    )


@router.post(
    "/{version_id}/activate", response_model=ActivationOut, responses=documented(404, 409, 503)
)
async def activate(
    key: Admin,
    version_id: VersionId,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    body: ChangeIn | None = None,
) -> ActivationOut:
    """Make this the current version: new runs start on it; open runs stay on theirs unless
    `move_inflight`. 409 if no worker serves it, or if the deployment changed meanwhile."""
    body = body or ChangeIn()
    result = await _temporal(
        settings,
        activation.activate(
            client, settings, engine, version_id, reason=body.reason, by=key.name,
            move_inflight=body.move_inflight, force=body.force,
            if_token=bytes.fromhex(body.if_token) if body.if_token else None,
        ),
    )  # fmt: skip
    return _out(result, body.reason, key.name)


@router.delete(
    "/{version_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404, 409, 503)
)
async def delete_version(
    key: Admin, version_id: VersionId, settings: SettingsDep, engine: EngineDep, client: TemporalDep
) -> Response:
    """Delete a snapshot that is not active, not the candidate and pinned by no open run."""
    candidate = (await run_in_threadpool(shadow.get_config, engine)).candidate
    await _temporal(
        settings,
        activation.check_deletable(client, settings, engine, version_id, candidate=candidate),
    )
    (settings.snapshots_dir / f"{version_id}.zip").unlink(missing_ok=True)
    await run_in_threadpool(registry.delete, engine, version_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
