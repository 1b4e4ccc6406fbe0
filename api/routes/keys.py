"""`/keys` (admin): create a key (shown once, in this answer only), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import EngineDep
from api.errors import documented
from api.security import AUTH_RESPONSES, Admin
from crewline import keys
from crewline.db import ApiKey
from crewline.keys import Scope

router = APIRouter(prefix="/keys", tags=["keys"], responses=AUTH_RESPONSES)


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    scope: Scope


class KeyOut(BaseModel):
    key_id: str
    name: str
    scope: Scope
    source: str = Field(description="api, bootstrap (made by `crewline up`) or env")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls.model_validate(row, from_attributes=True)


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=documented(409),
)
def create_key(body: KeyCreate, engine: EngineDep, admin: Admin) -> KeyCreated:
    try:
        row, key = keys.create(engine, body.name, body.scope)
    except keys.KeyRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return KeyCreated(**KeyOut.of(row).model_dump(), key=key)


@router.get("", response_model=list[KeyOut])
def list_keys(
    engine: EngineDep,
    admin: Admin,
    revoked: Annotated[bool, Query(description="include revoked keys")] = False,
) -> list[KeyOut]:
    return [KeyOut.of(k) for k in keys.listing(engine, revoked=revoked)]


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    responses=documented(404, 409),
)
async def revoke_key(key_id: str, engine: EngineDep, admin: Admin) -> KeyOut:
    """Revoke a key: it answers 401 from the next request on. Idempotent."""
    try:
        row = await run_in_threadpool(keys.revoke, engine, key_id)
    except LookupError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"key {key_id!r} not found") from None
    except keys.KeyRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return KeyOut.of(row)
