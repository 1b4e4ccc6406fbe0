"""API keys: random, shown once, stored as SHA-256 only, with one of three scopes.

A key looks like `crl_<id>_<secret>`: the id is public (it names the key in rows, logs and
answers), the secret is 43 URL-safe characters from `secrets`. The database holds the id, a name,
the scope and the hash — never the key. A key with 256 random bits needs no slow hash: nobody can
guess a preimage, and a fast hash keeps every request's check a single indexed lookup.

The embedded stack needs no set-up: on a database without an admin key, the API creates one and
writes it to `<data dir>/admin.key` (mode 0600), where the CLI on the same machine finds it.
`CREWLINE_ADMIN_KEY` sets the admin key explicitly instead (operators, compose, tests).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from crewline.db import session_scope, utcnow
from crewline.keyfile import key_file
from crewline.settings import Settings
from services.access import Principal, Scope, require
from services.errors import Conflict, NotFound

PREFIX = "crl_"
# A key's `last_used_at` is written at most this often: a request is a read, not a write.
TOUCH_EVERY = timedelta(minutes=1)


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_key"

    key_id: str = Field(primary_key=True, max_length=32)  # public: in logs, rows and answers
    name: str = Field(max_length=64)
    scope: str = Field(max_length=16)  # "read" | "run" | "admin"
    key_sha256: str = Field(unique=True, max_length=64)
    source: str = Field(default="api", max_length=16)  # "api" | "bootstrap" | "env"
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyRefused(ValueError):
    """A key operation the store refuses (the message says why)."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the full key)."""
    key_id = secrets.token_hex(4)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def _active(session: Session) -> list[ApiKey]:
    stmt = select(ApiKey).where(col(ApiKey.revoked_at).is_(None)).order_by(col(ApiKey.created_at))
    return list(session.exec(stmt))


def create(engine: Engine, name: str, scope: Scope, *, source: str = "api") -> tuple[ApiKey, str]:
    """A new key: the stored row and the key itself, which nothing can show again."""
    with session_scope(engine) as session:
        if any(k.name == name for k in _active(session)):
            raise KeyRefused(f"a key named {name!r} exists; revoke it or choose another name")
        key_id, key = new_key()
        row = ApiKey(key_id=key_id, name=name, scope=scope, key_sha256=digest(key), source=source)
        session.add(row)
    return row, key


def verify(engine: Engine, key: str) -> ApiKey | None:
    """The active key row for `key`, or None. Notes when it was last used (at most once a
    minute)."""
    if not key.isascii() or len(key) > 200:
        return None
    with session_scope(engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_sha256 == digest(key))).first()
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        last = row.last_used_at
        if last is None or now - last.replace(tzinfo=now.tzinfo) > TOUCH_EVERY:
            row.last_used_at = now
            session.add(row)
        return row


def listing(engine: Engine, *, revoked: bool = False) -> list[ApiKey]:
    with Session(engine) as session:
        stmt = select(ApiKey).order_by(col(ApiKey.created_at))
        if not revoked:
            stmt = stmt.where(col(ApiKey.revoked_at).is_(None))
        return list(session.exec(stmt))


def name_of(engine: Engine, key_id: str | None) -> str | None:
    if key_id is None:
        return None
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        return row.name if row is not None else None


def revoke(engine: Engine, key_id: str, by: str | None = None) -> ApiKey:
    """Revoke a key from now on. Refuses to revoke the last active admin key (nobody could
    create another one through the API) and the key `by` that asks (a client — a fuzzer, a
    script — would lock itself out, and the key file on the host would hold a dead key)."""
    with session_scope(engine) as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise LookupError(key_id)
        if row.revoked_at is not None:
            return row
        admins = [k for k in _active(session) if k.scope == Scope.ADMIN]
        if row.scope == Scope.ADMIN and len(admins) == 1:
            raise KeyRefused(
                f"{key_id} is the last active admin key; create another admin key first"
            )
        if key_id == by:
            raise KeyRefused(
                f"{key_id} is the key making this request; revoke it with another admin key"
            )
        row.revoked_at = utcnow()
        session.add(row)
        return row


def ensure_admin(settings: Settings, engine: Engine) -> str | None:
    """Make sure an admin can sign in. Returns a message for the operator (never the key).

    With `CREWLINE_ADMIN_KEY`: that key is the `env` admin key (a changed value revokes the old
    one). Without it, on a database with no active admin key: a new key, written to
    `<data dir>/admin.key` with mode 0600.
    """
    private_dir(settings.data_dir)
    configured = settings.admin_key.get_secret_value() if settings.admin_key else None
    if configured is not None:
        return _ensure_env_key(engine, configured)
    path = key_file(settings)
    with Session(engine) as session:
        active = _active(session)
        held = path.read_text().strip() if path.is_file() else None
        if any(k.scope == Scope.ADMIN for k in active) and (
            held is None or any(k.key_sha256 == digest(held) for k in active)
        ):
            return None
    # No admin key yet, or the file holds one that was revoked: this machine's CLI and `up`
    # need a working one.
    row, key = create(engine, f"admin-{utcnow():%Y%m%d%H%M%S}", Scope.ADMIN, source="bootstrap")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return f"created admin key {row.key_id}; it is in {path} (mode 0600)"


def private_dir(path: Path) -> None:
    """crewline's data directory, readable by its owner only (keys, databases, runs' files)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _ensure_env_key(engine: Engine, key: str) -> str | None:
    wanted = digest(key)
    with session_scope(engine) as session:
        env_keys = [k for k in _active(session) if k.source == "env"]
        if any(k.key_sha256 == wanted for k in env_keys):
            return None
        for old in env_keys:
            old.revoked_at = utcnow()
            session.add(old)
        key_id = "env" + wanted[:6]
        existing = session.get(ApiKey, key_id)
        if existing is not None:  # the same key again after it was replaced: reinstate it
            existing.revoked_at = None
            session.add(existing)
        else:
            session.add(
                ApiKey(
                    key_id=key_id, name=f"admin-env-{wanted[:6]}", scope=Scope.ADMIN,
                    key_sha256=wanted, source="env",
                )
            )  # fmt: skip
    return f"admin key {key_id} set from CREWLINE_ADMIN_KEY"


# ---- the service ---------------------------------------------------------------------------------
class KeyCreate(BaseModel):
    name: str = PField(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    scope: Scope


class KeyOut(BaseModel):
    key_id: str
    name: str
    scope: Scope
    source: str = PField(description="api, bootstrap (made by `crewline up`) or env")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls.model_validate(row, from_attributes=True)


class KeyCreated(KeyOut):
    key: str = PField(description="the key itself: shown this once, stored only as a hash")


class Keys:
    """Create (the key is in the answer only), list (never the keys), revoke — admin only."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def create(self, principal: Principal, body: KeyCreate) -> KeyCreated:
        require(principal, "keys.manage")
        try:
            row, key = await self.ctx.db(create, body.name, body.scope)
        except KeyRefused as exc:
            raise Conflict(str(exc)) from None
        return KeyCreated(**KeyOut.of(row).model_dump(), key=key)

    async def listing(self, principal: Principal, *, revoked: bool = False) -> list[KeyOut]:
        require(principal, "keys.manage")
        return [KeyOut.of(k) for k in await self.ctx.db(listing, revoked=revoked)]

    async def revoke(self, principal: Principal, key_id: str) -> KeyOut:
        require(principal, "keys.manage")
        try:
            row = await self.ctx.db(revoke, key_id, principal.key_id)
        except LookupError:
            raise NotFound(f"key {key_id[:80]!r} not found") from None
        except KeyRefused as exc:
            raise Conflict(str(exc)) from None
        return KeyOut.of(row)
