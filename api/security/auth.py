"""Who is calling: every route but `/health` (and the docs) needs an API key, and each route
names the scopes it allows. A `run`-scoped key sees and changes only the runs it started: another
key's run answers 404, as if it did not exist (its id says nothing about whether it does).

Accepted as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Both schemes are declared with
FastAPI's security classes, so OpenAPI documents them and the 401 / 403 answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from api.deps import EngineDep
from api.errors import Message
from crewline import keys
from crewline.db import Run, get_run
from crewline.keys import Scope

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


@dataclass(frozen=True)
class Principal:
    """The key a request came with (its public id and name; never the key)."""

    key_id: str
    name: str
    scope: Scope

    @property
    def own_runs_only(self) -> bool:
        return self.scope == Scope.RUN

    def may_see(self, run: Run) -> bool:
        return not self.own_runs_only or run.key_id == self.key_id

    @property
    def runs_of(self) -> str | None:
        """The key whose runs this principal is limited to (None: every run)."""
        return self.key_id if self.own_runs_only else None


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


async def _principal(
    request: Request,
    engine: EngineDep,
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
    row = await run_in_threadpool(keys.verify, engine, key)
    if row is None:
        raise _unauthorized("the API key is not valid: unknown or revoked")
    principal = Principal(key_id=row.key_id, name=row.name, scope=Scope(row.scope))
    request.state.principal = principal
    return principal


def _allow(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    names = " or ".join(scopes)

    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if principal.scope not in scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"key {principal.key_id} has scope {principal.scope.value!r}; this needs {names}",
            )
        return principal

    return check


# What a route allows, by role. `RunReader` routes filter to the key's own runs for `run` keys.
Reader = Annotated[Principal, Depends(_allow(Scope.READ, Scope.ADMIN))]
RunReader = Annotated[Principal, Depends(_allow(Scope.READ, Scope.RUN, Scope.ADMIN))]
Runner = Annotated[Principal, Depends(_allow(Scope.RUN, Scope.ADMIN))]
Admin = Annotated[Principal, Depends(_allow(Scope.ADMIN))]


def visible_run(engine: Engine, principal: Principal, run_id: str) -> Run:
    """The run, if this key may see it; else the same 404 as for a run that does not exist."""
    run = get_run(engine, run_id)
    if run is None or not principal.may_see(run):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} not found")
    return run
