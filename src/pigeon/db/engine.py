"""Engine creation: the async driver for each URL form, SQLite pragmas."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

# asyncpg prepares every statement, and after five runs PostgreSQL may keep a generic plan for
# it. One chosen while a table is new and empty (no statistics yet) is a sequential scan, and
# it stays cached as the table grows until autovacuum analyzes it (a minute or more later).
# `make bench` saw one: a batch's idempotency read took 45 ms instead of 0.1 ms for a whole
# run. Planning for the actual values costs a fraction of a millisecond per statement. (The
# accept batch's insert, whose plan depends on no value, is exempt: `messages.pg_batch`.)
POSTGRESQL_SETTINGS = {"plan_cache_mode": "force_custom_plan"}  # PostgreSQL 12 or later
# SQLite copies the write-ahead log back into the database file (a checkpoint) once the log
# holds this many pages, in the commit that crossed the mark. Every checkpoint copies each page
# changed since the last one: the accept path's hot pages (index tails, page 1) are copied
# once per checkpoint, however many commits changed them. SQLite's default, 1,000 pages, meant
# one every 20 or so accept batches. Fewer, longer checkpoints trade tail latency for
# throughput: a checkpoint holds up the commits behind it. In paired 10 s runs of the SQLite
# ingest (5 rounds each), 2,500 and 3,000 gave +2% to +11% req/s and a p99 of 20-23 ms against
# 15; in `bench/run.py`'s 15 s runs 2,500 reached a p99 of 28 ms, over the 25 ms goal, and
# 2,000 stayed at 19-23 ms (4 runs, 30-38% of the limit).
WAL_AUTOCHECKPOINT_PAGES = 2000
DEFAULT_WAIT_SECONDS = 30.0  # for a lock or a connection, without a server's timeout


def async_url(url: str) -> str:
    """Map plain `sqlite:///` and `postgresql://` URLs to their async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database URL scheme: {parsed.drivername}")
    return parsed.render_as_string(hide_password=False)


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" (from SQLAlchemy or straight from the driver):
    another connection holds the lock, try again."""
    if isinstance(exc, OperationalError):
        exc = exc.orig  # type: ignore[assignment]
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)


def is_sqlite(engine: AsyncEngine) -> bool:
    """True for the embedded engine."""
    return engine.dialect.name == "sqlite"


def create_engine(
    url: str, *, read_only: bool = False, timeout: float | None = None
) -> AsyncEngine:
    """Create the async engine.

    On SQLite the writing engine is one connection whose transactions take the write lock up
    front; a read-only engine has a few connections that read the WAL snapshot concurrently.
    `timeout` (the server's PIGEON_DATABASE_TIMEOUT_SECONDS) bounds each wait for the
    database: the pool's checkout, a lock (SQLite's busy timeout, PostgreSQL's lock_timeout)
    and connecting; past it the statement fails (see `db.errors`). Without it (migrations,
    the CLI) waits are 30 s, and PostgreSQL's locks are waited for as long as they are held.
    """
    driver_url = async_url(url)
    wait = DEFAULT_WAIT_SECONDS if timeout is None else timeout
    if make_url(driver_url).get_backend_name() != "sqlite":
        server_settings = dict(POSTGRESQL_SETTINGS)
        if timeout is not None:
            server_settings["lock_timeout"] = str(int(timeout * 1000))
        return create_async_engine(
            driver_url,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,
            pool_timeout=wait,
            connect_args={"server_settings": server_settings, "timeout": wait},
        )
    database = make_url(driver_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        driver_url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=4 if read_only else 1,
        max_overflow=0,
        pool_timeout=wait,
        connect_args={"timeout": wait},
    )
    _install_sqlite_hooks(engine.sync_engine, read_only=read_only, busy_timeout_ms=int(wait * 1000))
    return engine


def reader_for(engine: AsyncEngine, url: str, *, timeout: float | None = None) -> AsyncEngine:
    """The engine a process reads with beside `engine`: on SQLite a read-only one (a
    transaction of the writing engine takes the file's write lock), elsewhere `engine` itself.
    The caller disposes of it when it is not `engine`."""
    return create_engine(url, read_only=True, timeout=timeout) if is_sqlite(engine) else engine


def create_sync_engine(url: str, *, read_only: bool = False, busy_timeout_ms: int = 0) -> Engine:
    """A plain SQLite engine on the same file, for the accept path's own connections.

    By default it never waits for a lock (busy timeout 0): on the event loop's thread waiting
    would block the loop, and with it the very writer it waits for. A connection used on a
    thread of its own may wait (`busy_timeout_ms`).
    """
    parsed = make_url(async_url(url)).set(drivername="sqlite")
    engine = sa_create_engine(
        parsed,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        # Multi-row inserts have one statement text per row count: keep them prepared.
        connect_args={"timeout": 0, "check_same_thread": False, "cached_statements": 1024},
    )
    _install_sqlite_hooks(engine, read_only=read_only, busy_timeout_ms=busy_timeout_ms)
    return engine


def _install_sqlite_hooks(
    sync_engine: Engine, *, read_only: bool = False, busy_timeout_ms: int = 30_000
) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's documented recipe: let the "begin" hook below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        if read_only:
            cursor.execute("PRAGMA query_only=1")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # pysqlite's implicit transactions are off (isolation_level=None). A writer takes the
        # write lock up front, so a second writer waits instead of failing on a lock upgrade;
        # a reader only pins its snapshot and never blocks a writer (WAL).
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
