"""Who is calling: every route but `/health` (and the docs) needs an API key, and each route
names the scopes it allows. A `run`-scoped key sees and changes only the runs it started: another
key's run answers 404, as if it did not exist (its id says nothing about whether it does).

Accepted as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Both schemes are declared with
FastAPI's security classes, so OpenAPI documents them and the 401 / 403 answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Message
from services import keys
from services.access import Principal, Scope, require

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer crl_…`")
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same API key in an `X-API-Key` header"
)

# Every guarded route can answer these; 400 also covers an unparseable body or a Host the API
# does not serve.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Message, "description": "unparseable body, or a Host the API does not serve"},
    401: {"model": Message, "description": "no API key, or one that is unknown or revoked"},
    403: {"model": Message, "description": "the key's scope does not allow this route"},
}


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


async def _principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> Principal:
    key = bearer.credentials if bearer is not None else header
    if not key:
        raise _unauthorized(
            "this route needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: "
            "<key>` (`crewline keys create` makes one; `crewline up` stores an admin key in "
            "the data directory)"
        )
    row = await run_in_threadpool(keys.verify, request.app.state.services.ctx.engine, key)
    if row is None:
        raise _unauthorized("the API key is not valid: unknown or revoked")
    principal = Principal(key_id=row.key_id, name=row.name, scope=Scope(row.scope))
    request.state.principal = principal
    return principal


def allow(operation: str) -> Callable[..., Awaitable[Principal]]:
    """The route's dependency: a valid key whose scope `services.access.ALLOWED` lets do
    `operation` (the service checks the same table again; this makes the API answer 403 before
    reading a body, and documents it)."""

    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        require(principal, operation)
        return principal

    return check


# The route dependencies, one per operation of `services.access.ALLOWED`.
CanStartRuns = Annotated[Principal, Depends(allow("runs.start"))]
CanReadRuns = Annotated[Principal, Depends(allow("runs.read"))]
CanCancelRuns = Annotated[Principal, Depends(allow("runs.cancel"))]
CanRaiseBudgets = Annotated[Principal, Depends(allow("runs.budget"))]
CanApprove = Annotated[Principal, Depends(allow("runs.approve"))]
CanReadCosts = Annotated[Principal, Depends(allow("costs.read"))]
CanReadVersions = Annotated[Principal, Depends(allow("versions.read"))]
CanChangeVersions = Annotated[Principal, Depends(allow("versions.change"))]
CanReadShadow = Annotated[Principal, Depends(allow("shadow.read"))]
CanChangeShadow = Annotated[Principal, Depends(allow("shadow.change"))]
CanManageKeys = Annotated[Principal, Depends(allow("keys.manage"))]
CanReconcile = Annotated[Principal, Depends(allow("admin.reconcile"))]
