"""`/keys` (admin): create a key (shown once, in this answer only), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.errors import documented
from api.security import AUTH_RESPONSES, CanManageKeys
from services import ServicesDep
from services.keys import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/keys", tags=["keys"], responses=AUTH_RESPONSES)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, responses=documented(409)
)
async def create_key(body: KeyCreate, services: ServicesDep, key: CanManageKeys) -> KeyCreated:
    return await services.keys.create(key, body)


@router.get("", response_model=list[KeyOut])
async def list_keys(
    services: ServicesDep,
    key: CanManageKeys,
    revoked: Annotated[bool, Query(description="include revoked keys")] = False,
) -> list[KeyOut]:
    return await services.keys.listing(key, revoked=revoked)


@router.delete("/{key_id}", response_model=KeyOut, responses=documented(404, 409))
async def revoke_key(key_id: str, services: ServicesDep, key: CanManageKeys) -> KeyOut:
    """Revoke a key: it answers 401 from the next request on. Idempotent."""
    return await services.keys.revoke(key, key_id)
