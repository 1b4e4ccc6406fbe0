"""Signing in to the dashboard with an API key.

The key is checked once, at sign-in, and never stored: the browser gets a random session token in
an HttpOnly, SameSite=Strict cookie (Secure behind HTTPS), the database keeps only the token's
SHA-256 and the key's public id. Every request re-reads the key row, so revoking the key ends
its sessions. Every form carries the session's CSRF token; a POST without it is refused.
Scopes are the API's: a `read` key is shown no button it could not use, and the routes check
again.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, delete

from crewline.db import session_scope, utcnow
from services import keys
from services.access import Principal
from services.keys import ApiKey, Scope

COOKIE = "crewline_session"
LIFETIME = timedelta(hours=12)


class DashboardSession(SQLModel, table=True):
    """A browser signed in to the dashboard with an API key: the cookie holds a random token,
    the database only its SHA-256 and the key's public id (a revoked key ends its sessions)."""

    __tablename__ = "dashboard_session"

    token_sha256: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(index=True, max_length=32)
    csrf: str = Field(max_length=64)  # echoed by every form the session posts
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's principal and the session's CSRF token."""

    principal: Principal
    csrf: str

    @property
    def can_run(self) -> bool:
        return self.principal.scope in (Scope.RUN, Scope.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.principal.scope == Scope.ADMIN


class SignInRequired(Exception):
    """No valid session: the page answers with the sign-in page."""


def sign_in(engine: Engine, key: str) -> tuple[str, DashboardSession] | None:
    """A new session for a valid key: (the cookie's token, the row); None for a bad key."""
    row = keys.verify(engine, key.strip())
    if row is None:
        return None
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session_row = DashboardSession(
        token_sha256=keys.digest(token), key_id=row.key_id, csrf=secrets.token_urlsafe(24),
        created_at=now, expires_at=now + LIFETIME,
    )  # fmt: skip
    with session_scope(engine) as session:
        session.exec(delete(DashboardSession).where(DashboardSession.expires_at < now))  # type: ignore[arg-type]
        session.add(session_row)
    return token, session_row


def _lookup(engine: Engine, token: str) -> Viewer | None:
    with Session(engine) as session:
        row = session.get(DashboardSession, keys.digest(token))
        if row is None or row.expires_at.replace(tzinfo=utcnow().tzinfo) < utcnow():
            return None
        key = session.get(ApiKey, row.key_id)
        if key is None or key.revoked_at is not None:
            return None
        principal = Principal(key_id=key.key_id, name=key.name, scope=Scope(key.scope))
        return Viewer(principal, row.csrf)


async def viewer(request: Request) -> Viewer:
    """The signed-in viewer, or `SignInRequired` (the app answers with the sign-in page)."""
    token = request.cookies.get(COOKIE)
    engine = request.app.state.services.ctx.engine
    found = await run_in_threadpool(_lookup, engine, token) if token else None
    if found is None:
        raise SignInRequired()
    request.state.principal = found.principal
    request.state.viewer = found
    return found


def check_csrf(viewer: Viewer, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent, viewer.csrf):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form is stale or not from this dashboard; reload it"
        )


def set_cookie(request: Request, response: Response, token: str) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE, token, max_age=int(LIFETIME.total_seconds()), httponly=True,
        samesite="strict", secure=secure, path="/",
    )  # fmt: skip


def sign_out(engine: Engine, token: str | None) -> None:
    if not token:
        return
    with session_scope(engine) as session:
        row = session.get(DashboardSession, keys.digest(token))
        if row is not None:
            session.delete(row)
