"""Database writes that a short database outage must not turn into lost work or a second bill.

A write that fails because the database is unavailable — locked past SQLite's busy timeout,
PostgreSQL restarting, a disk full, a connection dropped — is retried here with backoff while the
activity keeps heartbeating (its heartbeats say it is waiting for the database), up to the
caller's patience. Anything else (a constraint, a bug) is raised at once. Past the patience the
error is raised too, and Temporal retries the attempt; what that costs is then the caller's to
say (a reservation: nothing; an answered call: its worst case, labelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from activities import heartbeat
from crewline.db import DbRunner

log = structlog.get_logger("crewline.persist")
T = TypeVar("T")
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
FIRST_DELAY_S, MAX_DELAY_S = 0.2, 5.0


async def persist(
    run: DbRunner, fn: Callable[..., T], *args: Any, patience_s: float, **kwargs: Any
) -> T:
    """`run(fn, *args, **kwargs)`, retried while the database is unavailable."""
    deadline = time.monotonic() + patience_s
    delay, waited = FIRST_DELAY_S, False
    while True:
        try:
            result = await run(fn, *args, **kwargs)
        except UNAVAILABLE as exc:
            reason = str(getattr(exc, "orig", exc)).splitlines()[0][:160]
            if time.monotonic() + delay > deadline:
                log.error("db.gave_up", write=getattr(fn, "__name__", "write"), error=reason)
                raise
            if not waited:
                log.warning("db.waiting", write=getattr(fn, "__name__", "write"), error=reason)
                waited = True
            heartbeat.report({"waiting_for": "database", "error": reason})
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if waited:
            heartbeat.report()
            log.info("db.recovered", write=getattr(fn, "__name__", "write"))
        return result
