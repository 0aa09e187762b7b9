"""The accept path's SQLite writer: plan on the loop's thread, write on a thread of its own.

A batch's reads and rules run on a read connection on the event loop's own thread (it never
waits for a lock: a WAL reader is not blocked by writers); its writes, one statement that
inserts and commits with the fsync (`sqlite_batch`), run on the process's writer thread
(`db.writer.SqliteWriter`), in turn with the worker's transactions, which may wait for another
process's write to end without holding up the loop.

Two batches are in flight: the loop reads and plans the next batch while the writer thread
writes the current one, and hands it over in the same turn of the loop, so the thread goes
from one batch to the next without waiting for the loop. A batch costs the writer about a
millisecond whatever its size (the fsync, the GIL handed over twice) plus tens of microseconds
per send: while the writer is busy, the next batch is handed over early only with at least
MIN_EARLY_BATCH sends; a smaller one waits until the writer is done, and grows meanwhile.

Each read is its own snapshot (no transaction around them): the batch holds no lock, and what
it reads can change before its writes anyway. The one race that matters, an idempotency record
stored by another process in between, makes the batch's insert fail (KeyCollision), and the
pipeline then settles each request alone. The idempotency records themselves are read only
after the insert found a live one (KeyInUse): every commit resets the read connection's page
cache, so reading them each batch went to the file each time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from pigeon.config import Settings
from pigeon.db.engine import create_sync_engine, is_busy
from pigeon.db.writer import SqliteWriter
from pigeon.idempotency.store import KeyInUse
from pigeon.messages.accept import MAX_BATCH
from pigeon.messages.plan import KeyCollision, Outcome, SendRequest, Writes, plan_batch
from pigeon.messages.sqlite_batch import MAX_ROWS, REPLAYED, SETUP_SQL, batch_statement

assert MAX_BATCH <= MAX_ROWS  # a batch is one statement

# In paired runs (64 connections): +12-15% req/s against handing over whatever is queued; 8
# and 16 did the same.
MIN_EARLY_BATCH = 8
SWITCH_INTERVAL = 0.00005  # seconds
Planned = tuple[list[Outcome], Writes]


class SqliteAcceptWriter:
    """Batches of sends on SQLite: planned on the loop, each one statement on a writer thread."""

    def __init__(self, settings: Settings, writer: SqliteWriter) -> None:
        self.settings = settings
        self._read_engine = create_sync_engine(settings.database_url, read_only=True)
        self._writer = writer
        writer.on_connect(SETUP_SQL)
        self._reader: Connection | None = None  # held across batches; reopened after an error
        self._handed: list[SendRequest] | None = None  # the batch the thread has next
        self._on_room: Callable[[], None] = _nothing
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, on_room: Callable[[], None]) -> None:
        """Begin on the running loop; `on_room` when the thread starts on a batch."""
        # The writer thread takes the GIL back twice per batch (to start it, and once its
        # statement is done); by default it could wait 5 ms each time for a busy loop to
        # hand it over. 50 µs: in paired runs against 200 µs, +3% req/s, p99 2 ms lower.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._loop = asyncio.get_running_loop()
        self._on_room = on_room

    def has_room(self, queued: int, in_flight: int) -> bool:
        """No batch waiting for the thread, and the thread idle or the queue big enough."""
        if self._handed is not None:
            return False
        return not in_flight or queued >= MIN_EARLY_BATCH

    def write(self, batch: list[SendRequest]) -> Awaitable[list[Outcome]]:
        """Plan the batch now and hand it to the writer thread at once."""
        self._handed = batch
        loop = self._loop or asyncio.get_running_loop()

        def started() -> None:  # on the writer thread
            loop.call_soon_threadsafe(self._started, batch)

        run: Awaitable[list[Outcome]]
        try:
            planned = self._plan_now(batch)
            if planned is None:
                # Busy (rare: see `_plan_now`): plan again when the database is free.
                run = self._write(batch, started, read_keys=False)
            else:
                outcomes, writes = planned
                run = self._committed(self._submit(writes, started), outcomes)
        except Exception as exc:
            run = _fail(exc)  # the pipeline answers the batch's requests with it
        return self._then_free(batch, run)

    async def rewrite(self, batch: list[SendRequest]) -> list[Outcome]:
        """Plan the batch reading its idempotency records, then write it."""
        return await self._write(batch, _nothing, read_keys=True)

    async def close(self) -> None:
        """Close the reader (the process's writer is its owner's to close)."""
        if self._reader is not None:
            self._reader.close()
        self._read_engine.dispose()

    async def _then_free(
        self, batch: list[SendRequest], run: Awaitable[list[Outcome]]
    ) -> list[Outcome]:
        try:
            return await run
        finally:
            self._started(batch)  # if it failed before the thread took it

    def _started(self, batch: list[SendRequest]) -> None:
        """On the loop: the writer thread took `batch` (or it failed before)."""
        if self._handed is batch:
            self._handed = None
            self._on_room()

    async def _write(
        self, batch: list[SendRequest], started: Callable[[], None], *, read_keys: bool
    ) -> list[Outcome]:
        """Plan on the loop's thread (retrying while the database is busy), then write."""
        outcomes, writes = await self._plan_when_free(batch, read_keys)
        return await self._committed(self._submit(writes, started), outcomes)

    def _submit(self, writes: Writes, started: Callable[[], None]) -> Future[None]:
        """Hand a planned batch's writes to the writer thread, at once."""
        statement = (
            batch_statement(writes.messages, writes.keys)
            if writes.messages
            else None  # every request refused or replayed: nothing to write
        )
        return self._writer.submit(_write_on_thread, statement, started)

    async def _committed(self, job: Future[None], outcomes: list[Outcome]) -> list[Outcome]:
        """Wait until the writer thread has committed a batch: its outcomes."""
        try:
            await asyncio.wrap_future(job, loop=self._loop)
        except sqlite3.IntegrityError as exc:
            if str(exc) == REPLAYED:
                raise KeyInUse() from exc
            # Another process committed one of these idempotency keys after this batch read
            # them: the pipeline settles each request alone.
            raise KeyCollision() from exc
        return outcomes

    async def _plan_when_free(self, batch: list[SendRequest], read_keys: bool) -> Planned:
        """Read what the batch needs and apply the rules, waiting while the database is busy."""
        deadline = asyncio.get_running_loop().time() + self.settings.database_timeout_seconds
        pause = 0.001
        while True:
            try:
                return self._plan(batch, read_keys)
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not is_busy(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _plan_now(self, batch: list[SendRequest]) -> Planned | None:
        """One attempt at `_plan_when_free`: None when the database is busy.

        A WAL reader waits only in rare cases (another connection recovering the WAL): never
        on the loop's thread, always briefly.
        """
        try:
            return self._plan(batch, read_keys=False)
        except (OperationalError, sqlite3.OperationalError) as exc:
            if is_busy(exc):
                return None
            raise

    def _plan(self, batch: list[SendRequest], read_keys: bool) -> Planned:
        if self._reader is None:
            self._reader = self._read_engine.connect()
        reader = self._reader
        try:
            planned = plan_batch(reader, batch, self.settings, read_keys=read_keys)
            if reader.in_transaction():  # begun by a Core read (WhatsApp windows)
                reader.rollback()
            return planned
        except BaseException:
            self._reader = None  # the next batch reads on a new connection
            reader.close()
            raise


def _write_on_thread(
    conn: Connection, statement: tuple[str, list[Any]] | None, started: Callable[[], None]
) -> None:
    """On the writer thread: one batch's writes. `started` comes first: the loop plans the
    next batch while this one is written."""
    started()
    if statement is not None:
        # Outside a transaction (autocommit) the one statement is its own transaction: it
        # waits for the write lock (up to the busy timeout), inserts everything and commits
        # with its fsync, all in one call into SQLite that releases the GIL throughout.
        conn.connection.driver_connection.execute(*statement)  # type: ignore[union-attr]


def _nothing() -> None:
    pass


async def _fail(exc: Exception) -> list[Outcome]:
    raise exc
