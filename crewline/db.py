"""The app database's plumbing: the engine (SQLite by default, PostgreSQL in production), sessions,
dialect-aware upserts, and the threads that keep synchronous SQLAlchemy off event loops.

No table is defined here: each room owns its tables (`records` the runtime's, `versioning` the
registry's, `services.keys` the API keys, `dashboard.sessions` the sign-ins). `make_engine`
creates whatever tables the process has imported, and adds the nullable columns a newer crewline
added to an existing database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlmodel import Session, SQLModel, create_engine

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


SQLITE_POOL_SIZE = 40


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # WAL lets the API read while the worker writes; busy_timeout rides out the short write
    # locks instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine, the tables and any columns added since the database was made."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Pool as many connections as the API has request threads (anyio's 40): with the
        # default 5 + 10 overflow, requests queued for a connection and each overflow one was
        # opened (with its pragmas) and closed per request — measured, POST /runs at 100
        # clients spent a fifth of its time there. An idle SQLite connection holds no lock.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE // 2,
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    SQLModel.metadata.create_all(engine)
    add_missing_columns(engine)
    if url.startswith("sqlite:///"):
        _owner_only(Path(url.removeprefix("sqlite:///")))
    return engine


def _owner_only(database: Path) -> None:
    """The database file and its WAL files readable by their owner only (they hold key digests,
    prompts and answers); a file this process does not own is left as it is."""
    for path in (database, database.with_name(database.name + "-wal"),
                 database.with_name(database.name + "-shm")):  # fmt: skip
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_uid == os.getuid():
                os.chmod(path, 0o600)


def add_missing_columns(engine: Engine) -> list[str]:
    """Additive schema migration: a nullable column a newer crewline added to an existing table
    is added in place, so a data directory made by an older version keeps its runs and ledger.
    Anything else (a new NOT NULL column, a type change) refuses to start, saying so."""
    inspector = inspect(engine)
    added: list[str] = []
    for table in SQLModel.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"the database at {engine.url!r} lacks {table.name}.{column.name}, which "
                    "cannot be added automatically; migrate it or start from a new database"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
        if added:
            for index in table.indexes:  # create_all skips indexes of tables that existed
                index.create(engine, checkfirst=True)
    return added


def insert_for(where: Session | Connection | Engine | str, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT (SQLite and PostgreSQL both can, in their dialect);
    `where`: a session, connection or engine, or the dialect's name."""
    if isinstance(where, str):
        dialect = where
    else:
        dialect = (where.get_bind() if isinstance(where, Session) else where).dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


class DbRunner:
    """Runs the app database's synchronous calls off the event loop, in threads of its own.

    On SQLite one thread: one writer at a time in this process, so a write never waits on
    SQLite's lock (whose busy handler sleeps in steps of milliseconds) behind another write of
    the same worker — measured, contended writers were most of a worker's time under load. On
    PostgreSQL a small pool: its row locks let writers of different runs go in parallel.
    """

    def __init__(self, engine: Engine, threads: int | None = None) -> None:
        self.engine = engine
        size = threads or (1 if engine.dialect.name == "sqlite" else 8)
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="crewline-db")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(engine, *args, **kwargs)` in a database thread."""
        call = functools.partial(fn, self.engine, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except Exception:
            session.rollback()
            raise
