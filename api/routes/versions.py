"""`/versions`: snapshots, the active version, activation, rollback, history and diffs — thin over
`services.versions`, whose rules live in `versioning/`. Temporal unreachable is a 503 and changes
nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError

from api.errors import documented
from api.security import AUTH_RESPONSES, CanChangeVersions, CanReadVersions
from services import ServicesDep
from services.version_models import (
    VERSION_ID_PATTERN,
    ActivationOut,
    ChangeIn,
    HistoryOut,
    RollbackIn,
    SnapshotIn,
    SnapshotOut,
    VersionDetail,
    VersionDiffOut,
    VersionList,
)
from versioning.bundle import MAX_BUNDLE_BYTES

router = APIRouter(prefix="/versions", tags=["versions"], responses=AUTH_RESPONSES)
VersionId = Annotated[str, Path(pattern=VERSION_ID_PATTERN, examples=["snap-4ba2cc33f458"])]


@router.get("", response_model=VersionList, responses=documented(503))
async def list_versions(key: CanReadVersions, services: ServicesDep) -> VersionList:
    """Every snapshot, newest first: which is active, live workers, runs served, spend."""
    return await services.versions.listing(key)


async def _read_capped(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"a snapshot upload is at most {limit} bytes"
            )
    return bytes(body)


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
    key: CanChangeVersions,
    request: Request,
    response: Response,
    services: ServicesDep,
    note: Annotated[str | None, Query(max_length=500, description="for a zip upload")] = None,
) -> SnapshotOut:
    """Snapshot the server's own agent code (JSON body, optional `note`), or store a snapshot
    zip built elsewhere (`crewline version snapshot` uploads one): verified, secret-checked."""
    raw = await _read_capped(request, MAX_BUNDLE_BYTES)
    if request.headers.get("content-type", "").startswith("application/zip"):
        out = await services.versions.snapshot(key, note=note, upload=raw)
    else:
        try:
            note = SnapshotIn.model_validate_json(raw or b"{}").note
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        out = await services.versions.snapshot(key, note=note)
    response.status_code = status.HTTP_201_CREATED if out.created else status.HTTP_200_OK
    return out


@router.get("/history", response_model=HistoryOut)
async def version_history(
    key: CanReadVersions,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HistoryOut:
    """Every change of the current version, newest first: when, from, to, by whom, why."""
    return await services.versions.history(key, limit)


@router.post("/rollback", response_model=ActivationOut, responses=documented(404, 409, 503))
async def rollback(
    key: CanChangeVersions, body: RollbackIn, services: ServicesDep
) -> ActivationOut:
    """Back to the version active before the current one. With `from_version`, a retried
    rollback that already happened answers the same and rolls back nothing more."""
    return await services.versions.rollback(key, body)


@router.get("/{version_id}", response_model=VersionDetail, responses=documented(404, 503))
async def read_version(
    key: CanReadVersions, version_id: VersionId, services: ServicesDep
) -> VersionDetail:
    """The manifest (files and hashes, model settings, tools) and who serves it now."""
    return await services.versions.detail(key, version_id)


@router.get(
    "/{version_id}/bundle",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the snapshot zip"},
        **documented(404),
    },
)
async def download_bundle(
    key: CanReadVersions, version_id: VersionId, services: ServicesDep
) -> FileResponse:
    """The snapshot zip (e.g. for a worker on another host: `crewline worker --version ID`)."""
    path = await services.versions.bundle_path(key, version_id)
    return FileResponse(path, media_type="application/zip", filename=path.name)


@router.get("/{a}/diff/{b}", response_model=VersionDiffOut, responses=documented(404))
async def diff(
    key: CanReadVersions,
    a: VersionId,
    b: VersionId,
    services: ServicesDep,
    all_files: Annotated[bool, Query(alias="all", description="diff code files too")] = False,
) -> VersionDiffOut:
    """Which files, prompts, model settings and tools changed from a to b; prompt diffs."""
    return await services.versions.diff(key, a, b, all_files=all_files)


@router.post(
    "/{version_id}/activate", response_model=ActivationOut, responses=documented(404, 409, 503)
)
async def activate(
    key: CanChangeVersions,
    version_id: VersionId,
    services: ServicesDep,
    body: ChangeIn | None = None,
) -> ActivationOut:
    """Make this the current version: new runs start on it; open runs stay on theirs unless
    `move_inflight`. 409 if no worker serves it, or if the deployment changed meanwhile."""
    return await services.versions.activate(key, version_id, body)


@router.delete(
    "/{version_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404, 409, 503)
)
async def delete_version(
    key: CanChangeVersions, version_id: VersionId, services: ServicesDep
) -> Response:
    """Delete a snapshot that is not active, not the candidate and pinned by no open run."""
    await services.versions.delete(key, version_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
