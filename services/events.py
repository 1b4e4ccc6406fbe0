"""Events: a run's stream of what happens (`GET /runs/{id}/events`, Server-Sent Events) — steps
started and finished, model turns, tool calls, approvals asked and answered, checks, spend, the
status — read from the run's stored, numbered events (`records.events`).

A subscriber first gets the events after the one it names (`Last-Event-ID`, or `?after=`), then
waits. Waiting costs no thread and no query per subscriber: one `EventHub` per API process asks
the database every `POLL_S` for the newest event number of each run someone watches (one query
for all of them) and wakes that run's subscribers, which then read what is new. Events written by
any worker, any API process, show up here — the database is the meeting point. The stream ends
after the run's final status; a run that ended before events existed gets one status event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi.sse import ServerSentEvent
from sqlalchemy.exc import DBAPIError

from records import events as records
from records.runs import get_run
from records.statuses import TERMINAL
from records.tables import RunEvent
from services import Context
from services.access import Principal, require
from services.errors import NotFound, invalid

log = structlog.get_logger("crewline.events")
POLL_S = 0.25  # how often the hub looks for new events while anyone watches
RECHECK_S = 60.0  # a quiet subscriber re-reads anyway (belt and braces), this often
PAGE = 500


@dataclass(frozen=True)
class Event:
    seq: int | None  # None: a summary the stream made up (a run older than its events)
    kind: str
    data: dict[str, Any]

    @classmethod
    def of(cls, row: RunEvent) -> Event:
        data = json.loads(row.data_json)
        return cls(row.seq, row.kind, {"seq": row.seq, "at": row.at.isoformat(), **data})

    @property
    def final(self) -> bool:
        return self.kind == records.RUN and self.data.get("status") in TERMINAL


def resume_after(after: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after the event a reconnecting client names (`Last-Event-ID`, what
    EventSource sends by itself) or after `?after=`, whichever is later; 0 is the beginning."""
    start = after or 0
    named = (last_event_id or "").strip()
    if named:
        if not named.isascii() or not named.isdigit():
            raise invalid(
                ("header", "last-event-id"),
                "must be an event number (the `id:` of an event)",
                named[:20],
            )
        start = max(start, int(named))
    return start


class EventHub:
    """Wakes the subscribers of runs whose newest event number moved."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    def watch(self, run_id: str) -> asyncio.Event:
        wake = asyncio.Event()
        self._watchers.setdefault(run_id, set()).add(wake)
        self._ctx.metrics.event_streams.inc()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        return wake

    def unwatch(self, run_id: str, wake: asyncio.Event) -> None:
        watchers = self._watchers.get(run_id)
        if watchers is not None:
            watchers.discard(wake)
            if not watchers:
                del self._watchers[run_id]
                self._seen.pop(run_id, None)
        self._ctx.metrics.event_streams.dec()

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    async def _poll(self) -> None:
        while self._watchers and not self.closing.is_set():
            try:
                latest = await self._ctx.db(records.latest_seqs, list(self._watchers))
            except DBAPIError as exc:  # the database is away: subscribers wait, nothing is lost
                log.warning("events.poll_failed", error=str(exc.orig)[:200])
                latest = {}
            for run_id, seq in latest.items():
                if seq > self._seen.get(run_id, 0):
                    self._seen[run_id] = seq
                    for wake in self._watchers.get(run_id, ()):
                        wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=POLL_S)

    async def close(self) -> None:
        """End every stream (the process is stopping)."""
        self.closing.set()
        for watchers in self._watchers.values():
            for wake in watchers:
                wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Events:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub = EventHub(ctx)

    async def open(self, principal: Principal, run_id: str, after: int = 0) -> Subscription:
        """A subscription to a run's events after number `after` (checked now: a stream that
        cannot be had is refused before it starts)."""
        require(principal, "runs.read")
        run = await self.ctx.db(get_run, run_id)
        if run is None or not principal.may_see(run):
            raise NotFound(f"run {run_id!r} not found")
        return Subscription(self, run_id, after)

    async def history(self, principal: Principal, run_id: str, after: int = 0) -> list[Event]:
        """The events stored so far (no waiting)."""
        sub = await self.open(principal, run_id, after)
        return [e async for e in sub.events(follow=False)]


class Subscription:
    def __init__(self, events: Events, run_id: str, after: int) -> None:
        self._events, self.run_id, self.after = events, run_id, after

    async def sse(self) -> AsyncIterator[ServerSentEvent]:
        """The events as Server-Sent Events: `id` the event's number, `event` its kind."""
        async for event in self.events():
            yield ServerSentEvent(
                id=None if event.seq is None else str(event.seq), event=event.kind, data=event.data
            )

    async def events(self, *, follow: bool = True) -> AsyncIterator[Event]:
        """The run's events after `after`, in order, each once; with `follow`, then each new one
        as it is stored, until the run's final status (or the process stops)."""
        ctx, hub = self._events.ctx, self._events.hub
        last = self.after
        wake = hub.watch(self.run_id) if follow else None
        try:
            while True:
                if wake is not None:
                    wake.clear()
                rows = await ctx.db(records.events_after, self.run_id, last, PAGE)
                for row in rows:
                    event = Event.of(row)
                    last = row.seq
                    yield event
                    if event.final:
                        return
                if len(rows) == PAGE:
                    continue  # more are stored: read on before waiting
                if wake is None or hub.closing.is_set():
                    return
                run = await ctx.db(get_run, self.run_id)
                if run is not None and run.status in TERMINAL:
                    if last == 0:  # ended before it had events: say how it ended, once
                        yield Event(None, records.RUN, {"status": run.status, "error": run.error})
                        return
                    # Its final event may still be on its way (written after the status).
                    if not await ctx.db(records.events_after, self.run_id, last, 1):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), timeout=POLL_S * 8)
                        if not await ctx.db(records.events_after, self.run_id, last, 1):
                            return
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=RECHECK_S)
        finally:
            if wake is not None:
                hub.unwatch(self.run_id, wake)
