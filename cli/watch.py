"""How `crewline run` learns that a run moved: it follows the run's event stream
(`GET /runs/{id}/events`, Server-Sent Events) on a background thread, and the live view asks
`changed()` between the ticks of its clock. A dropped stream is reopened where it stopped
(`Last-Event-ID`); an API without the stream, or a stream that keeps failing, turns the watch
into polling once a second, so the command works against any crewline API."""

from __future__ import annotations

import queue
import threading
import time

import httpx
from httpx_sse import connect_sse

from cli.http import api_client
from crewline.settings import Settings

POLL_S = 1.0  # how often to look when there is no stream
RETRIES = 5  # stream failures in a row before falling back to polling


class RunWatch:
    def __init__(self, settings: Settings, run_id: str) -> None:
        self._settings, self._run_id = settings, run_id
        self._news: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._last_id = ""
        self._stop = threading.Event()
        self.streaming = True  # False once it fell back to polling
        self._last_look = 0.0
        threading.Thread(target=self._follow, name="crewline-events", daemon=True).start()

    def changed(self, wait: float) -> bool:
        """Whether the run may have moved since the last call (waits up to `wait` seconds)."""
        try:
            self._news.get(timeout=wait)
        except queue.Empty:
            if self.streaming:
                return False
            now = time.monotonic()
            if now - self._last_look < POLL_S:
                return False
        while not self._news.empty():  # a burst of events is one look
            self._news.get_nowait()
        self._last_look = time.monotonic()
        return True

    def close(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        failures = 0
        while not self._stop.is_set() and failures < RETRIES:
            headers = {"Last-Event-ID": self._last_id} if self._last_id else {}
            try:
                # Read timeout above the server's 15 s keep-alive comments: a silent stream is
                # a dead one.
                with (
                    api_client(self._settings, timeout=45) as client,
                    connect_sse(client, "GET", f"/runs/{self._run_id}/events", headers=headers)
                    as source,
                ):  # fmt: skip
                    if source.response.status_code != 200:
                        break  # an API without the stream (or one that refuses it): poll
                    failures = 0
                    self._news.put("connected")  # anything missed while away: look now
                    for event in source.iter_sse():
                        if event.id:
                            self._last_id = event.id
                        self._news.put(event.event)
                        if self._stop.is_set():
                            return
                # The server ended the stream: the run ended (the view sees it and closes
                # this watch), or the API is stopping (reopen where it stopped).
                self._news.put("ended")
                self._stop.wait(1.0)
            except httpx.HTTPError:
                failures += 1
                self._stop.wait(min(2.0**failures / 4, 4.0))
        self.streaming = False
        self._news.put("polling")
