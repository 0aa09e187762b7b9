"""Write transactions that hold the database's locks only while their statements run.

On SQLite every write of the file waits for one lock. A transaction on the async engine runs
each statement through the event loop: under load the loop takes milliseconds per turn, and a
transaction of five statements held the lock for five turns while the accept writer waited
behind it in SQLite's busy handler (which sleeps 1, 2, 5, 10... ms between tries). So a
process writes SQLite through one `SqliteWriter`: one thread holding one connection, running
each job, a whole transaction written as a plain function of a `Connection`, in one call from
BEGIN IMMEDIATE to COMMIT; the accept path's batches go through the same thread in turn. The
process's own writes never wait for each other's lock, and none holds it across a loop turn.

Between processes (`pigeon serve`'s API and its worker, or a `pigeon worker` beside it) the
writers take turns on a lock file first (`ProcessTurns`, `<database>-writer.lock`): SQLite's
own busy handler sleeps 1, 2, 5, 10, 15, 20 ms... between tries, so a writer that found the
file locked for a millisecond slept ten, and the accepts it carried waited behind it; the
lock file hands over within a fraction of a millisecond.

On PostgreSQL (row locks, many connections) the same functions run on the async engine
(`EngineWriter`): one transaction each, statements awaited as before.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.db.engine import create_sync_engine, is_sqlite

P = ParamSpec("P")
T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000  # how long a job waits for another process's write lock
MAX_GROUP = 32  # jobs written in one commit at most
# How long a writer waiting for its turn sleeps between tries (seconds): short at first, as
# turns last milliseconds, never more than TURN_POLL_MAX.
TURN_POLL_FIRST = 0.0001
TURN_POLL_MAX = 0.001
# A list in a writer connection's `info`: what its jobs left to run once their commit is done
# and the turn given back (`metrics.on_commit`'s counting, which SQLAlchemy's commit event
# would otherwise run before the COMMIT, with the file's lock held).
AFTER_TURN = "pigeon.db.after_turn"


class Writer(Protocol):
    """Runs `work(conn, ...)` in one write transaction: its result once committed."""

    async def transaction(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def close(self) -> None: ...


class EngineWriter:
    """PostgreSQL: each job is a transaction on the async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def transaction(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `work` in a transaction of its own."""
        async with self.engine.begin() as conn:
            return await conn.run_sync(work, *args, **kwargs)

    async def close(self) -> None:
        """Nothing held: the engine belongs to the caller."""


class ProcessTurns:
    """Turns on a SQLite file's writes between the processes that write it through a writer.

    An exclusive `flock` on `<database>-writer.lock`, held from BEGIN to COMMIT. A writer
    waiting for it tries again after 0.1 ms, then 0.2, 0.4 ... up to 1 ms, until its busy
    timeout has passed; then it fails the way SQLite would (SQLITE_BUSY: 503 to a request).
    Writers outside Pigeon's (the sqlite3 shell, a migration) do not take turns: SQLite's own
    lock still orders them. Where the lock file cannot be created (a read-only directory),
    the writers of the file do without it.
    """

    def __init__(self, database: str, *, timeout_ms: int) -> None:
        self._timeout = timeout_ms / 1000
        try:
            self._fd: int | None = os.open(
                f"{database}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError:
            self._fd = None

    def take(self) -> None:
        """Wait for this process's turn (raises sqlite3.OperationalError past the timeout)."""
        if self._fd is None:
            return
        deadline = time.monotonic() + self._timeout
        pause = TURN_POLL_FIRST
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    busy = sqlite3.OperationalError("database is locked")
                    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
                    raise busy from None
                time.sleep(pause)
                pause = min(pause * 2, TURN_POLL_MAX)

    def give(self) -> None:
        """End this process's turn."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _database_file(url: str) -> str | None:
    database = make_url(url).database
    return None if not database or database == ":memory:" else database


@dataclass(slots=True)
class _Job:
    work: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    transactional: bool
    future: Future[Any] = field(default_factory=Future)


class SqliteWriter:
    """SQLite: the process's write connection on a thread of its own; jobs run in turn.

    Accept batches that queue up while a job runs are written together (group commit): one
    BEGIN IMMEDIATE, each batch in a savepoint of its own (one that fails is rolled back
    alone), one COMMIT and its fsync for all; each result is handed over once that commit is
    done. A batch alone runs as it is (one statement, its own transaction). `transaction`
    jobs are grouped the same way, but never with accept batches: the two kinds take turns
    (`_next_group`).
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self._engine = create_sync_engine(url, busy_timeout_ms=busy_timeout_ms)
        database = _database_file(url)
        self._turns = ProcessTurns(database, timeout_ms=busy_timeout_ms) if database else None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="pigeon-sqlite-writer")
        self._thread.daemon = True
        self._thread.start()
        self._conn: Connection | None = None  # only the writer thread touches it
        self._setup: list[str] = []
        self._closed = False

    def on_connect(self, script: str) -> None:
        """SQL to run on each new connection of the writer (before its first job)."""
        self._setup.append(script)

    def submit(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `work(conn, ...)` on the writer thread as it is: alone, no transaction around
        it; with other jobs, in their transaction."""
        return self._put(_Job(work, args, {}, transactional=False))

    async def transaction(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `work` on the writer thread in a transaction: its result once committed."""
        return await asyncio.wrap_future(self._put(_Job(work, args, kwargs, transactional=True)))

    async def close(self) -> None:
        """Close the connection and stop the thread (after the jobs already queued)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._engine.dispose()
        if self._turns is not None:
            self._turns.close()

    def _put(self, job: _Job) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        self._jobs.put(job)
        return job.future

    def _serve(self) -> None:
        """The writer thread: run jobs, together when several are waiting, until told to stop."""
        waiting: list[_Job] = []
        stopping, accepts_last = False, False
        while True:
            if not waiting:
                job = None if stopping else self._jobs.get()
                if job is None:
                    break
                waiting.append(job)
            while not stopping:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    waiting.append(more)
            group = _next_group(waiting, after_accepts=accepts_last)
            accepts_last = not group[0].transactional
            self._run_group(group)
        self._close()

    def _run_group(self, group: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        after: list[Callable[[], None]] = []
        try:
            if self._turns is not None:
                self._turns.take()
            try:
                conn = self._connection()
                conn.info[AFTER_TURN] = after
                if len(group) == 1:
                    outcomes.append(self._alone(conn, group[0], after))
                else:
                    with conn.begin():
                        outcomes = [self._in_savepoint(conn, job) for job in group]
            finally:
                if self._turns is not None:
                    self._turns.give()
        except BaseException as exc:  # the turn, connection, BEGIN or COMMIT failed: all
            if _broken(exc):
                self._close(broken=True)  # the next job starts on a new connection
            outcomes = [(job, None, exc) for job in group]
            after.clear()
        # Before the results are handed over: a caller sees its commit counted.
        for then in after:
            then()
        for job, result, error in outcomes:
            if not job.future.set_running_or_notify_cancel():
                continue
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _alone(
        self, conn: Connection, job: _Job, after: list[Callable[[], None]]
    ) -> tuple[_Job, Any, BaseException | None]:
        try:
            if job.transactional:
                with conn.begin():
                    return job, job.work(conn, *job.args, **job.kwargs), None
            return job, job.work(conn, *job.args, **job.kwargs), None
        except Exception as exc:
            after.clear()  # its COMMIT may have failed after SQLAlchemy's commit event
            if _broken(exc):
                self._close(broken=True)
            return job, None, exc

    def _in_savepoint(self, conn: Connection, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        # What a job leaves in conn.info (work to do on commit: metrics.on_commit) goes with
        # it when it is rolled back alone.
        # (AFTER_TURN is the group's, kept as it is: only the group's COMMIT adds to it.)
        info = {
            key: list(v) if isinstance(v, list) and key != AFTER_TURN else v
            for key, v in conn.info.items()
        }
        savepoint = conn.begin_nested()
        try:
            result = job.work(conn, *job.args, **job.kwargs)
        except Exception as exc:
            savepoint.rollback()
            conn.info.clear()
            conn.info.update(info)
            return job, None, exc
        savepoint.commit()
        return job, result, None

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect()
            try:
                for script in self._setup:
                    conn.connection.driver_connection.executescript(script)  # type: ignore[union-attr]
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close(self, *, broken: bool = False) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if broken:
                conn.invalidate()
            conn.close()


def _next_group(waiting: list[_Job], *, after_accepts: bool) -> list[_Job]:
    """Take the jobs the next commit writes out of `waiting`: the accept batches (`submit`),
    or the transactions (`transaction`), up to MAX_GROUP of one kind, never both.

    A transaction may be a step of hundreds of rows (a chunk of delivery reports, of a
    worker's outcomes): grouped with accept batches, it made each of them wait for its whole
    run, and on a busy machine for the time its thread was not scheduled. The two kinds take
    turns, so that neither waits for more than one group of the other. (Transactions still
    share commits with each other: a worker's steps and its webhook deliveries' did, one
    fsync for several.)
    """
    accepts = [job for job in waiting if not job.transactional][:MAX_GROUP]
    transactions = [job for job in waiting if job.transactional][:MAX_GROUP]
    group = transactions if transactions and (after_accepts or not accepts) else accepts
    taken = {id(job) for job in group}
    waiting[:] = [job for job in waiting if id(job) not in taken]
    return group


def _broken(exc: BaseException) -> bool:
    """Whether the connection may be unusable after `exc` (a collision, a lock held too long
    or an error in our own code leave it sound)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig  # type: ignore[assignment]
    if isinstance(exc, sqlite3.Error):
        return not isinstance(exc, sqlite3.IntegrityError | sqlite3.OperationalError)
    return not isinstance(exc, Exception)


def writer_for(engine: AsyncEngine, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Writer:
    """The writer for a process on this engine: SQLite's own thread, or the engine itself.

    `busy_timeout_ms` bounds a job's wait for another process's write lock on SQLite (the
    server's PIGEON_DATABASE_TIMEOUT_SECONDS; past it the job fails, 503).
    """
    if is_sqlite(engine):
        return SqliteWriter(url, busy_timeout_ms=busy_timeout_ms)
    return EngineWriter(engine)
