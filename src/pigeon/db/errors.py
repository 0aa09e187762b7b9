"""When the database cannot serve: which driver errors mean it, and one log line per incident.

A lock held past the timeout, a full disk, a read-only file or filesystem, a PostgreSQL server
that is gone or refuses connections, no pooled connection free in time: none of these is the
request's fault or a bug in Pigeon, and each passes. They are answered 503
`database_unavailable` with `Retry-After` (`errors.DatabaseUnavailable`), and logged once when
the incident starts, not with a traceback per request. Everything that maps a driver error to
that answer calls `unavailable` here.
"""

from __future__ import annotations

import errno
import sqlite3
import time

import structlog
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pigeon.db.engine import create_engine
from pigeon.db.tables import platform_state
from pigeon.errors import DatabaseUnavailable

log = structlog.get_logger("pigeon.db")

# SQLite's primary result codes (the low byte of an extended code) that mean "not now".
_SQLITE = {
    5: "the database is locked by another connection",  # SQLITE_BUSY
    6: "the database is locked by another connection",  # SQLITE_LOCKED
    8: "the database is read-only",  # SQLITE_READONLY
    10: "the database file cannot be read or written",  # SQLITE_IOERR
    13: "the disk is full",  # SQLITE_FULL
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
    15: "the database is locked by another connection",  # SQLITE_PROTOCOL
}
# PostgreSQL's SQLSTATEs (by class, or exact) that mean "not now".
_POSTGRESQL_CLASSES = {
    "08": "the connection to PostgreSQL failed",
    "53": "PostgreSQL is out of resources (disk, memory or connections)",
    "57": "PostgreSQL is shutting down or refusing connections",
    "58": "PostgreSQL cannot read or write its files",
}
_POSTGRESQL_STATES = {
    "25006": "the database is read-only",
    "55P03": "a lock is held past the timeout",
    "55000": "the database is not accepting connections",
}
# Lock contention passes in moments; the rest needs someone to act.
_SOON = frozenset({_SQLITE[5], _POSTGRESQL_STATES["55P03"], "no database connection was free"})
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})
INCIDENT_GAP_SECONDS = 30.0  # failures closer together than this are one incident


def unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` means the database cannot serve now; None when it means something else."""
    if isinstance(exc, PoolTimeout):
        return "no database connection was free"
    if isinstance(exc, PendingRollbackError):  # a transaction's connection was lost in it
        return "the connection to the database was lost"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "the connection to the database was lost"
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, sqlite3.Error):
        return _SQLITE.get((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF)
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(state, str):
        return _POSTGRESQL_STATES.get(state) or _POSTGRESQL_CLASSES.get(state[:2])
    if _cannot_connect(exc):
        return "the database server cannot be reached"
    # An error raised while handling one of these (say, by a rollback on a connection that is
    # gone: SQLAlchemy's PendingRollbackError) still means the database cannot serve.
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return unavailable_reason(cause) if cause is not None and cause is not exc else None


def _cannot_connect(exc: BaseException) -> bool:
    """A connection attempt refused, unreachable or timed out (asyncpg raises these as is)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return isinstance(exc, OSError) and (
        exc.errno in _UNREACHABLE or "Connect call failed" in str(exc)
    )


class _Incidents:
    """Logs the first failure of each incident; later ones within the gap only count."""

    def __init__(self) -> None:
        self.last_failure = float("-inf")

    def note(self, reason: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last_failure > INCIDENT_GAP_SECONDS:
            log.error("database unavailable", reason=reason, error=_one_line(exc))
        self.last_failure = now


INCIDENTS = _Incidents()


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The 503 for a database that cannot serve now (noted as an incident), or None."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    INCIDENTS.note(reason, exc)
    return DatabaseUnavailable(reason, retry_after=1 if reason in _SOON else 5)


def _one_line(exc: BaseException) -> str:
    """The driver's own message: never SQLAlchemy's, which quotes the statement's parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


async def check_writable(url: str, *, wait_seconds: float) -> None:
    """Fail (with the driver's error) unless the database takes writes: a statement that
    writes nothing, rolled back. SQLite and PostgreSQL refuse it when read-only."""
    engine = create_engine(url, timeout=wait_seconds)
    try:
        async with engine.connect() as conn:
            await conn.execute(
                update(platform_state)
                .where(platform_state.c.name == "")
                .values(value=platform_state.c.value)
            )
            await conn.rollback()
    finally:
        await engine.dispose()
