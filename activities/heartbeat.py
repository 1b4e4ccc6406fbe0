"""Heartbeat for the whole life of an activity, from its first line.

A heartbeat timeout is how Temporal notices a dead worker in seconds instead of at the
start-to-close timeout. The heartbeat must come from a side task, not between awaits of the
activity's own work: under load the activity may wait on the database thread pool or a slow
provider for longer than the timeout while its worker is perfectly alive (seen at 1,000 runs in
flight before this existed: live activities timed out and were run — and billed — twice).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from temporalio import activity

HEARTBEAT_EVERY_S = 2.0
# The first beat's delay for an attempt that started on time (see `beat`). With a 10 s heartbeat
# timeout this leaves 9 s of margin; a worker whose clock runs more than that behind the
# server's would see a late start as on time.
FIRST_BEAT_AFTER_S = 1.0

P = ParamSpec("P")
R = TypeVar("R")
# What this activity's heartbeats carry (Temporal shows them with the pending activity: the Web
# UI, `temporal workflow describe`), e.g. that the step waits for a rate-limit slot.
_details: ContextVar[list[Any]] = ContextVar("heartbeat_details")


def report(*details: Any) -> None:
    """Let the next heartbeats of the running activity carry `details` (none: clear them)."""
    holder = _details.get(None)
    if holder is not None:
        holder[:] = details


def heartbeating(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate an async activity (under `@activity.defn`) to heartbeat every 2 s while it runs."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        holder: list[Any] = []
        _details.set(holder)  # the activity's own task: the beat task below inherits it

        async def beat() -> None:
            # The first beat: at once if this attempt started running late (under load the
            # worker can begin an activity well after the server marked it started — eager
            # dispatch — and that beat moves the heartbeat deadline past the wait; without it,
            # at 1,000 runs in flight one activity of 15,000 timed out and ran twice). Otherwise
            # after FIRST_BEAT_AFTER_S: a step that ends sooner sends no heartbeat at all, which
            # measured 3.9 ms less per run (its heartbeat and the server's write of it).
            started = activity.info().started_time
            late = (datetime.now(UTC) - started).total_seconds() >= FIRST_BEAT_AFTER_S
            if not late:
                await asyncio.sleep(FIRST_BEAT_AFTER_S)
            while True:
                activity.heartbeat(*holder)
                await asyncio.sleep(HEARTBEAT_EVERY_S)

        beater = asyncio.create_task(beat())
        try:
            return await fn(*args, **kwargs)
        finally:
            beater.cancel()

    return wrapper
