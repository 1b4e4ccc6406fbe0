"""The floors crewline is compared with, measured in the same invocation.

- `asyncio`: the five steps as plain awaited calls — no durability at all.
- `sqlite`: the same, plus one SQLite row written and committed per step (WAL, synchronous=NORMAL)
  — durability without an orchestrator, like an in-process checkpointing engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

STEPS = 5


async def fake_llm(delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    return "ok"


async def plain_pipeline(delay_s: float) -> None:
    for _ in range(STEPS):
        await fake_llm(delay_s)


class SqlitePipeline:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS step (run INTEGER, n INTEGER, out TEXT)")
        self._lock = asyncio.Lock()
        self._runs = 0

    async def run(self, delay_s: float) -> None:
        self._runs += 1
        run = self._runs
        for n in range(STEPS):
            out = await fake_llm(delay_s)
            async with self._lock:  # one writer, like a checkpointer with one connection
                self._db.execute("BEGIN")
                self._db.execute("INSERT INTO step VALUES (?, ?, ?)", (run, n, out))
                self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start
