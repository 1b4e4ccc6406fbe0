"""Health: is each part up — the database (a write, not only a read), Temporal, a live worker for
the active version, the LLM provider (probed: its model list, cached), the reconciler's last pass
— and what state the workers' circuit breakers are in (as each worker last persisted them).

Liveness for people and load balancers: `status` is "ok" only if every part is; the API answers
503 otherwise. Open like the docs (no key): it says what is down, never a secret.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlmodel import Field, SQLModel

from crewline.db import insert_for, utcnow
from crewline.sandbox import Sandbox
from crewline.temporal import has_workflow_pollers
from records.runs import breakers
from services import Context
from services.probe import ProviderProbe
from versioning import deployment

TEMPORAL_TIMEOUT_S = 3.0


class HealthProbe(SQLModel, table=True):
    """One row the health check rewrites: a database that can be read but not written (disk
    full, read-only file, a lock held) is down for crewline."""

    __tablename__ = "health_probe"

    id: int = Field(default=1, primary_key=True)
    at: datetime = Field(default_factory=utcnow)


def _database(engine: Engine) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            stmt = insert_for(conn, HealthProbe).values(id=1, at=utcnow())
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"at": utcnow()}))
        rows = [b.model_dump(exclude={"id"}) for b in breakers(engine)]
    except Exception as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return {"ok": False, "error": f"{type(exc).__name__}: {reason}"}, []
    return {"ok": True, "writable": True}, rows


class Health:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.probe = ProviderProbe()
        # What else has an opinion (the embedded stack's supervisor, the reconciler): name ->
        # a function answering {"ok": bool, ...}.
        self.parts: dict[str, Any] = {}

    async def _temporal(self) -> tuple[dict[str, Any], dict[str, Any]]:
        ctx = self.ctx
        temporal: dict[str, Any] = {"ok": True, "address": ctx.settings.temporal_address}
        workers: dict[str, Any] = {"ok": True}
        try:
            await asyncio.wait_for(
                ctx.temporal.service_client.check_health(), timeout=TEMPORAL_TIMEOUT_S
            )
        except Exception as exc:
            temporal.update(ok=False, error=type(exc).__name__)
            workers.update(ok=False, error="unknown: Temporal is unreachable")
            return temporal, workers
        try:
            state = await deployment.describe(ctx.temporal, ctx.settings)
            live = await deployment.live_workers(ctx.temporal, ctx.settings)
        except Exception as exc:
            workers.update(ok=False, error=f"cannot list workers: {type(exc).__name__}")
            return temporal, workers
        workers["active_version"] = state.current
        workers["live"] = {v: len(ws) for v, ws in live.items()}
        if state.current is None:
            # No version is active: unversioned workers (`crewline worker --unversioned`), or
            # a fresh deployment whose first worker is starting.
            if not live and not await has_workflow_pollers(ctx.temporal, ctx.settings):
                workers.update(
                    ok=False, error=f"no worker polls task queue {ctx.settings.task_queue}"
                )
        elif not live.get(state.current):
            workers.update(
                ok=False,
                error=f"no live worker for the active version {state.current}: start one "
                f"(`crewline worker --version {state.current}`, or `crewline up`)",
            )
        return temporal, workers

    async def _sandbox(self) -> dict[str, Any]:
        """Whether agents' commands can run isolated on this host (checked once; workers on
        other hosts check their own at start-up and say so in their logs)."""
        found = await asyncio.to_thread(Sandbox(self.ctx.settings.sandbox_limits()).check)
        if not found.ok:
            return {"ok": False, "error": found.describe()}
        return {"ok": True, "interpreters": list(found.interpreters),
                "python_modules": list(found.python_modules)}  # fmt: skip

    async def report(self) -> dict[str, Any]:
        """Each part's state, and "ok" only if all are."""
        ctx = self.ctx
        database, breaker_rows = await ctx.db(_database)
        temporal, workers = await self._temporal()
        llm = await self.probe.check(ctx.settings)
        parts: dict[str, dict[str, Any]] = {
            "api": {"ok": True}, "database": database, "temporal": temporal,
            "workers": workers, "llm": llm, "sandbox": await self._sandbox(),
        }  # fmt: skip
        for name, check in self.parts.items():
            parts[name] = check()
        healthy = all(part["ok"] for part in parts.values())
        return {"status": "ok" if healthy else "degraded", **parts, "breakers": breaker_rows}
