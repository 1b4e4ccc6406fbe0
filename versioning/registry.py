"""The version registry in the app database: which snapshots exist, and the activation history.

The zip under `<data dir>/snapshots/` is the snapshot; a registry row says it exists, when and from
where it was taken, and carries its manifest for listing and diffing without opening zips. Which
version is *current* is Temporal's to say (the Worker Deployment's routing); the history here
records every change crewline made or saw, and is what rollback walks back through.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Column, Engine, Text, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from crewline.db import session_scope, utcnow
from records.tables import LedgerEntry, Run, from_pico
from versioning.bundle import Bundle, Manifest

# The source of a version sent as a zip through the API (`POST /versions`).
UPLOADED = "upload"


class VersionRow(SQLModel, table=True):
    __tablename__ = "versions"

    id: str = Field(primary_key=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    source: str = Field(max_length=500)  # a checkout's path, or UPLOADED
    files: int
    size_bytes: int
    manifest_json: str = Field(sa_column=Column(Text, nullable=False))
    note: str | None = Field(default=None, max_length=500)

    def manifest(self) -> Manifest:
        return Manifest.model_validate_json(self.manifest_json)


class ActivationRow(SQLModel, table=True):
    """One change of the deployment's current version."""

    __tablename__ = "version_activations"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    # activate | rollback | bootstrap (first start) | external (changed outside crewline)
    action: str = Field(max_length=16)
    from_version: str | None = Field(default=None, max_length=32)
    to_version: str = Field(max_length=32)
    reason: str | None = Field(default=None, max_length=500)
    by: str | None = Field(default=None, max_length=200)
    moved_runs: int = 0


@dataclass(frozen=True)
class Usage:
    runs: int = 0
    spend_usd: Decimal = Decimal(0)
    shadow_spend_usd: Decimal = Decimal(0)


def register(
    engine: Engine, bundle: Bundle, *, source: str, note: str | None = None
) -> tuple[VersionRow, bool]:
    """Record a written snapshot; (row, False) if it was already registered (same content)."""
    row = VersionRow(
        id=bundle.id,
        source=source[-500:],
        files=len(bundle.contents),
        size_bytes=bundle.size_bytes,
        manifest_json=bundle.manifest.canonical().decode(),
        note=note,
    )
    try:
        with session_scope(engine) as session:
            session.add(row)
        return row, True
    except IntegrityError:
        existing = get(engine, bundle.id)
        if existing is None:
            raise
        return existing, False


def get(engine: Engine, version_id: str) -> VersionRow | None:
    with Session(engine) as session:
        return session.get(VersionRow, version_id)


def list_versions(engine: Engine) -> list[VersionRow]:
    with Session(engine) as session:
        stmt = select(VersionRow).order_by(col(VersionRow.created_at).desc())
        return list(session.exec(stmt))


def delete(engine: Engine, version_id: str) -> None:
    with session_scope(engine) as session:
        row = session.get(VersionRow, version_id)
        if row is not None:
            session.delete(row)


def usage(engine: Engine) -> dict[str, Usage]:
    """Runs served and spend, per version (shadow spend apart)."""
    with Session(engine) as session:
        runs = session.exec(  # type: ignore[call-overload]
            select(Run.version, func.count())
            .where(col(Run.version).is_not(None))
            .group_by(col(Run.version))
        ).all()
        spend = session.exec(  # type: ignore[call-overload]
            select(LedgerEntry.version, LedgerEntry.shadow, func.sum(LedgerEntry.cost_pusd))
            .where(col(LedgerEntry.version).is_not(None))
            .group_by(col(LedgerEntry.version), col(LedgerEntry.shadow))
        ).all()
    found: dict[str, dict[str, object]] = {}
    for version, count in runs:
        found.setdefault(str(version), {})["runs"] = int(count)
    for version, shadow, pusd in spend:
        key = "shadow_spend_usd" if shadow else "spend_usd"
        found.setdefault(str(version), {})[key] = from_pico(int(pusd or 0))
    return {version: Usage(**fields) for version, fields in found.items()}  # type: ignore[arg-type]


def record_activation(
    engine: Engine,
    *,
    action: str,
    from_version: str | None,
    to_version: str,
    reason: str | None = None,
    by: str | None = None,
    moved_runs: int = 0,
) -> ActivationRow:
    row = ActivationRow(
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        by=by,
        moved_runs=moved_runs,
    )
    with session_scope(engine) as session:
        session.add(row)
    return row


def history(engine: Engine, limit: int = 100) -> list[ActivationRow]:
    """Newest first."""
    with Session(engine) as session:
        stmt = select(ActivationRow).order_by(col(ActivationRow.id).desc()).limit(limit)
        return list(session.exec(stmt))


def active_stack(rows_oldest_first: Iterable[ActivationRow], current: str | None) -> list[str]:
    """The versions a rollback walks back through, the current one last.

    An activation pushes its version; a rollback pops the version it left. So activate v1, v2,
    v3 then rollback, rollback returns to v2, then v1 — and never bounces back to a version it
    rolled back from. A current version crewline did not set (set outside, or a lost write) counts
    as activated on top.
    """
    stack: list[str] = []
    for row in rows_oldest_first:
        if row.action == "rollback" and stack and stack[-1] == row.from_version:
            stack.pop()
        if not stack or stack[-1] != row.to_version:
            stack.append(row.to_version)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    return stack
