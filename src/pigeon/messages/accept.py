"""The accept path: validated send requests become durable messages, many per commit.

Requests join a queue; one writer takes whatever is waiting, reads what the whole batch needs
in a few queries (idempotency records, recipients, extensions, WhatsApp interactions), applies
the rules to each request, writes every message, first event and idempotency record, and
commits once. Each request is answered when the commit that holds it is done: durable before
the answer, without one commit (and one fsync) per request (group commit).

On SQLite the batch's reads and rules run on a read connection on the event loop's own thread;
its writes, one statement that inserts and commits with the fsync (`sqlite_batch`), run on a
writer thread while the loop goes on parsing requests. The next batch is read and planned
while the previous one is written (two batches in flight): the writer thread goes from one
batch to the next without waiting for the loop. On PostgreSQL the batch runs on the async
engine, one at a time.

A batch is first planned without reading its idempotency records: the writes check them,
on index pages they are about to change anyway (`sqlite_batch`, `pg_batch`), and fail with
KeyInUse if a key has a live record (a retried request). Only then is the batch planned again
with the records read, to replay their answers. On SQLite those reads went to the file each
time (every commit resets the read connection's page cache); on PostgreSQL they were a round
trip per batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog
from sqlalchemy import Connection, Engine, select, tuple_
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.engine import create_sync_engine, is_busy, is_sqlite
from pigeon.db.lookup import rows_by_key
from pigeon.db.tables import (
    idempotency_keys,
    identities,
    infobip_extensions,
    users,
    whatsapp_interactions,
)
from pigeon.errors import Conflict, PigeonError, Unprocessable
from pigeon.idempotency.store import KeyInUse, Scope, StoredResponse
from pigeon.ids import new_message_id
from pigeon.messages import status
from pigeon.messages.pg_batch import run_batch
from pigeon.messages.rules import (
    Draft,
    check_whatsapp_window,
    person_destination,
    platform_sender,
    user_destination,
)
from pigeon.messages.schemas import AcceptedMessage, Channel, SendResponse
from pigeon.messages.sqlite_batch import (
    ACCEPTED_STATUS_CODE,
    MAX_ROWS,
    NEW_MESSAGE_STATE,
    REPLAYED,
    SETUP_SQL,
    batch_statement,
)
from pigeon.messages.whatsapp import PLATFORM

log = structlog.get_logger("pigeon.accept")
MAX_BATCH = 256
assert MAX_BATCH <= MAX_ROWS  # a SQLite batch is one statement
# A SQLite batch costs the writer about a millisecond whatever its size (the fsync, the GIL
# handed over twice) plus tens of microseconds per send. While the writer is busy the next
# batch is handed over early only with at least this many sends; a smaller one waits until
# the writer is done, and grows meanwhile. In paired runs (64 connections): +12-15% req/s
# against handing over whatever is queued; 8 and 16 did the same.
MIN_EARLY_BATCH = 8
SWITCH_INTERVAL = 0.00005  # seconds
BUSY_TIMEOUT_MS = 30_000  # how long a batch waits for SQLite's write lock before failing
# PostgreSQL: batches run on one connection held while they keep coming. One idle longer than
# this goes back to the pool, whose checkout pings it (the server may have restarted).
HOLD_IDLE_SECONDS = 1.0
Outcome = StoredResponse | PigeonError


@dataclass(slots=True)
class SendRequest:
    """One send, validated: its recipient still to be resolved against the database."""

    account_id: str
    recipient_type: str  # "user", "person" or "app"
    recipient: str  # a user id, an identity id, or the normalised `to` of an app message
    channel: Channel
    content: dict[str, Any]
    scope: Scope | None = None
    scope_id: bytes | None = None
    fingerprint: str | None = None
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


_RECORD = ("scope", "fingerprint", "status_code", "response_body", "expires_at")


def _ids(items: Sequence[SendRequest], kind: str) -> list[str]:
    return sorted({i.recipient for i in items if i.recipient_type == kind})


def _by_key(
    conn: Connection, table: Any, key: str, values: list[str], columns: tuple[str, ...]
) -> dict[str, Any]:
    return {getattr(row, key): row for row in rows_by_key(conn, table, key, values, columns)}


# The columns the rules read (`rules.user_destination`, `rules.person_destination`): the
# others (JSON documents, timestamps) would be decoded for nothing.
_USER = ("id", "account_id", "active", "channel_sms", "channel_whatsapp", "channel_email")
_IDENTITY = ("id", "account_id", "type", "person")
_EXTENSION = ("account_id", "sms_sender", "whatsapp_sender", "email_sender")


class _Batch:
    """Everything one batch needs from the database, read in a handful of queries."""

    def __init__(
        self, conn: Connection, items: Sequence[SendRequest], now: datetime, read_keys: bool
    ) -> None:
        self.conn = conn
        self.users = _by_key(conn, users, "id", _ids(items, "user"), _USER)
        self.identities = _by_key(conn, identities, "id", _ids(items, "person"), _IDENTITY)
        accounts = sorted({i.account_id for i in items if i.recipient_type == "person"})
        self.extensions = _by_key(conn, infobip_extensions, "account_id", accounts, _EXTENSION)
        self.records: dict[bytes, Any] = {}  # live ones: an expired record is replaced
        scopes = [i.scope_id for i in items if i.scope_id] if read_keys else []
        for record in rows_by_key(conn, idempotency_keys, "scope", scopes, _RECORD):
            if record.expires_at > now:
                self.records[record.scope] = record

    def last_inbound(self, triples: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Any]:
        if not triples:
            return {}
        key = tuple_(
            whatsapp_interactions.c.owner,
            whatsapp_interactions.c.business_number,
            whatsapp_interactions.c.customer_number,
        )
        rows = self.conn.execute(select(whatsapp_interactions).where(key.in_(triples)))
        return {(r.owner, r.business_number, r.customer_number): r.last_inbound_at for r in rows}


def _draft(item: SendRequest, batch: _Batch, settings: Settings) -> Draft:
    """Resolve one request's destination and sender (no WhatsApp window yet)."""
    if item.recipient_type == "user":
        user = batch.users.get(item.recipient)
        destination = user_destination(user, item.recipient, item.account_id, item.channel)
        return Draft(
            item.account_id,
            item.channel,
            "user",
            item.recipient,
            destination,
            "platform",
            platform_sender(settings, item.channel),
            item.content,
        )
    if item.recipient_type == "person":
        identity = batch.identities.get(item.recipient)
        destination, sender = person_destination(
            identity,
            item.recipient,
            item.account_id,
            item.channel,
            batch.extensions.get(item.account_id),
        )
        return Draft(
            item.account_id,
            item.channel,
            "person",
            item.recipient,
            destination,
            "tenant",
            sender,
            item.content,
        )
    return Draft(
        item.account_id,
        item.channel,
        "app",
        None,
        item.recipient,
        "platform",
        platform_sender(settings, item.channel),
        item.content,
    )


def _window_key(draft: Draft) -> tuple[str, str, str]:
    owner = draft.account_id if draft.route == "tenant" else PLATFORM
    return owner, draft.sender or "", draft.destination


@dataclass(slots=True)
class Writes:
    """What a planned batch inserts: its new messages (each with a first event), and each
    message's idempotency record (None for a request without an idempotency-key)."""

    now: datetime
    messages: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any] | None] = field(default_factory=list)


def plan_batch(
    conn: Connection, items: Sequence[SendRequest], settings: Settings, *, read_keys: bool = True
) -> tuple[list[Outcome], Writes]:
    """Read what the batch needs and apply the rules: each request's outcome, and the rows
    to insert for those accepted (by `write_batch`, in the same transaction).

    With `read_keys=False` the idempotency records are not read: the plan takes every key as
    new, and its writes raise KeyInUse if one is not (`sqlite_batch`, `pg_batch`).
    """
    now = utcnow()
    batch = _Batch(conn, items, now, read_keys)
    outcomes: list[Outcome | Draft] = []
    for item in items:
        record = batch.records.get(item.scope_id) if item.scope_id else None
        if record is not None:
            outcomes.append(_replay(record, item))
            continue
        try:
            outcomes.append(_draft(item, batch, settings))
        except PigeonError as exc:
            outcomes.append(exc)
    whatsapp = [o for o in outcomes if isinstance(o, Draft) and o.channel == "whatsapp"]
    inbound = batch.last_inbound([_window_key(d) for d in whatsapp])
    window = timedelta(seconds=settings.whatsapp_window_seconds)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Draft) and outcome.channel == "whatsapp":
            owner, business, customer = _window_key(outcome)
            try:
                check_whatsapp_window(
                    inbound.get((owner, business, customer)),
                    business_number=business,
                    customer_number=customer,
                    window=window,
                    now=now,
                    template="template" in outcome.content,
                )
            except PigeonError as exc:
                outcomes[index] = exc
    return _rows(items, outcomes, Writes(now), settings)


def _replay(record: Any, item: SendRequest) -> Outcome:
    if record.fingerprint != item.fingerprint:
        return Unprocessable(
            "this idempotency-key was already used with a different request body",
            code="idempotency_key_reused",
        )
    return StoredResponse(record.status_code, record.response_body.encode(), replayed=True)


def _rows(
    items: Sequence[SendRequest],
    outcomes: list[Outcome | Draft],
    writes: Writes,
    settings: Settings,
) -> tuple[list[Outcome], Writes]:
    now = writes.now
    message_rows, key_rows = writes.messages, writes.keys
    results: list[Outcome] = []
    expires = now + timedelta(seconds=settings.idempotency_ttl_seconds)
    for item, outcome in zip(items, outcomes, strict=True):
        if not isinstance(outcome, Draft):
            results.append(outcome)
            continue
        message_id = new_message_id()
        message_rows.append(_message_row(message_id, outcome, now))
        body = msgspec.json.encode(
            SendResponse(
                messages=[
                    AcceptedMessage(
                        messageId=message_id,
                        status=status.ACCEPTED,
                        destination=outcome.destination,
                    )
                ]
            )
        )
        if item.scope is None:
            key_rows.append(None)
        else:
            account_id, method, path, key = item.scope
            key_rows.append(
                {
                    "scope": item.scope_id,
                    "account_id": account_id,
                    "method": method,
                    "path": path,
                    "key": key,
                    "fingerprint": item.fingerprint,
                    "status_code": ACCEPTED_STATUS_CODE,
                    "response_body": body.decode(),
                    "created_at": now,
                    "expires_at": expires,
                }
            )
        results.append(StoredResponse(ACCEPTED_STATUS_CODE, body, replayed=False))
    return results, writes


def write_batch(conn: Connection, writes: Writes) -> None:
    """PostgreSQL: insert a planned batch's rows in the caller's transaction, in one statement
    (`pg_batch`); KeyInUse if one of its keys has a live record. (SQLite writes the same rows
    through `sqlite_batch`.)"""
    run_batch(conn, writes.messages, writes.keys)


def _message_row(message_id: str, draft: Draft, now: datetime) -> dict[str, Any]:
    # The columns a new message sets; the rest start NULL. SQLite's trigger derives the state
    # columns itself (`sqlite_batch`); PostgreSQL takes them from here.
    return {
        "id": message_id,
        "account_id": draft.account_id,
        "channel": draft.channel,
        "recipient_type": draft.recipient_type,
        "recipient_id": draft.recipient_id,
        "destination": draft.destination,
        "route": draft.route,
        "sender": draft.sender,
        "content": draft.content,
        **NEW_MESSAGE_STATE,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


class AcceptPipeline:
    """Group commit for sends: one writer, many waiting requests, one commit per batch."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_commit = on_commit
        self._queue: list[SendRequest] = []
        self._ready = asyncio.Event()
        self._in_flight: set[Scope] = set()
        self._writer: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._writing = 0  # SQLite: batches handed to the writer thread and not yet done
        self._handed: list[SendRequest] | None = None  # SQLite: the batch the writer has next
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the app's loop, once started
        # SQLite: reads and rules run on a read connection on the loop's thread (it never waits
        # for a lock: a WAL reader is not blocked by writers); the writes run on a writer
        # thread with a connection of its own, which may wait for another process's write to
        # end without holding up the loop.
        url = settings.database_url
        self._read_engine: Engine | None = None
        self._write_engine: Engine | None = None
        if is_sqlite(engine):
            self._read_engine = create_sync_engine(url, read_only=True)
            self._write_engine = create_sync_engine(url, busy_timeout_ms=BUSY_TIMEOUT_MS)
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="pigeon-sqlite-writer")
        self._reader: Connection | None = None  # held across batches; reopened after an error
        self._driver: Any = None  # the writer thread's connection (only that thread touches it)
        self._held: AsyncConnection | None = None  # PostgreSQL: see `_connection`
        self._held_until = 0.0

    def start(self) -> None:
        """Start the writer (in the app's lifespan)."""
        if self._write_engine is not None:
            # The writer thread takes the GIL back twice per batch (to start it, and once its
            # statement is done); by default it could wait 5 ms each time for a busy loop to
            # hand it over. 50 µs: in paired runs against 200 µs, +3% req/s, p99 2 ms lower.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._loop = asyncio.get_running_loop()
        self._writer = self._loop.create_task(self._write_forever())

    async def stop(self) -> None:
        """Answer what is queued, then stop the writer."""
        self._stopping = True
        self._ready.set()
        if self._writer is not None:
            await self._writer
        self._writer_thread.submit(self._close_driver).result()
        self._writer_thread.shutdown(wait=True)
        if self._reader is not None:
            self._reader.close()
        await self._release(self._held)
        for sync_engine in (self._read_engine, self._write_engine):
            if sync_engine is not None:
                sync_engine.dispose()

    async def submit(self, item: SendRequest) -> StoredResponse:
        """Queue a send and wait until it is committed (or refused)."""
        if item.scope is not None:
            if item.scope in self._in_flight:
                raise Conflict(
                    "a request with this idempotency-key is still being processed; retry shortly",
                    code="idempotency_request_in_flight",
                    headers={"Retry-After": "1"},
                )
            self._in_flight.add(item.scope)
        try:
            # The loop `start` saw: asking for the running loop costs a system call each time.
            item.future = (self._loop or asyncio.get_running_loop()).create_future()
            self._queue.append(item)
            self._ready.set()
            outcome = await item.future
        finally:
            if item.scope is not None:
                self._in_flight.discard(item.scope)
        if isinstance(outcome, PigeonError):
            raise outcome
        return outcome

    async def _write_forever(self) -> None:
        while not (self._stopping and not self._queue):
            await self._ready.wait()
            self._ready.clear()
            if self._write_engine is not None:
                self._feed_writer()
                continue
            while self._queue:  # PostgreSQL: one batch at a time
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._write(batch, self._run(batch, read_keys=False))
        if self._batches:
            await asyncio.wait(self._batches)

    def _feed_writer(self) -> None:
        """SQLite: plan the next batch and hand it to the writer thread at once, unless the
        thread already has one waiting.

        Called when requests arrive, as soon as the writer thread starts on the batch it was
        handed, and when a batch is done: the next batch is planned while that one is
        written, and is waiting for the thread when it is done.
        """
        if self._handed is not None or not self._queue:
            return
        if self._writing and len(self._queue) < MIN_EARLY_BATCH:
            return  # the writer is busy: let the next batch grow until it is done
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._handed = batch
        loop = self._loop or asyncio.get_running_loop()

        def started() -> None:  # on the writer thread
            loop.call_soon_threadsafe(self._writer_started, batch)

        run: Awaitable[list[Outcome]]
        try:
            planned = self._plan_now(batch)
            if planned is None:
                # Busy (rare: see `_plan_sqlite`): plan again when the database is free.
                run = self._run_sqlite(batch, started, read_keys=False)
            else:
                outcomes, writes = planned
                run = self._committed(self._submit(writes, started), outcomes)
        except Exception as exc:
            run = _fail(exc)  # `_write` answers the batch's requests with it
        self._writing += 1
        task = loop.create_task(self._write(batch, run))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _writer_started(self, batch: list[SendRequest]) -> None:
        """On the loop: the writer thread took `batch` (or it failed before): feed the next."""
        if self._handed is batch:
            self._handed = None
            self._feed_writer()
            if self._stopping:
                self._ready.set()

    async def _write(self, batch: list[SendRequest], run: Awaitable[list[Outcome]]) -> None:
        try:
            try:
                outcomes = await run
            except KeyInUse:
                outcomes = await self._settle(batch, replayed=True)
            except IntegrityError:
                outcomes = await self._settle(batch, replayed=False)
        except Exception as exc:
            log.exception("accept batch failed", size=len(batch))
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            if self._write_engine is not None:  # SQLite: the writer is free for the next batch
                self._writing -= 1
                self._writer_started(batch)
                self._feed_writer()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(outcome)
        if self.on_commit is not None:
            self.on_commit()

    async def _settle(self, batch: list[SendRequest], *, replayed: bool) -> list[Outcome]:
        """The outcomes of a batch whose insert failed on an idempotency key."""
        if replayed:
            # The batch was planned without reading its idempotency records, and one of its
            # keys has a live record (a retried request): plan it again, reading them.
            try:
                return await self._run(batch)
            except (IntegrityError, KeyInUse):
                pass
        # Another process stored one of these idempotency keys after the batch read them:
        # settle each alone, so the one that collided replays the other's answer.
        return [await self._alone(item) for item in batch]

    async def _alone(self, item: SendRequest) -> Outcome:
        for _ in range(2):
            try:
                return (await self._run([item]))[0]
            except (IntegrityError, KeyInUse):
                continue
        return Conflict(
            "the idempotency-key is being used concurrently; retry",
            code="idempotency_request_in_flight",
            headers={"Retry-After": "1"},
        )

    async def _run(self, batch: list[SendRequest], *, read_keys: bool = True) -> list[Outcome]:
        if self._write_engine is not None:
            return await self._run_sqlite(batch, _nothing, read_keys=read_keys)
        for attempt in range(2):
            conn = await self._connection()
            planned = False
            try:
                async with conn.begin():
                    outcomes, writes = await conn.run_sync(
                        plan_batch, batch, self.settings, read_keys=read_keys
                    )
                    planned = True
                    await conn.run_sync(write_batch, writes)
            except (IntegrityError, KeyInUse):
                raise  # rolled back; the connection is sound
            except BaseException as exc:
                self._held = None  # the next batch starts on another connection
                await self._release(conn, broken=True)
                lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
                if lost and not planned and attempt == 0:
                    continue  # the held connection was gone before anything was written
                raise
            self._held_until = asyncio.get_running_loop().time() + HOLD_IDLE_SECONDS
            return outcomes
        raise AssertionError("unreachable")

    async def _connection(self) -> AsyncConnection:
        """PostgreSQL: the connection batches run on.

        Checking one out of the pool for each batch cost a round trip to the server (the
        pool's ping) and about 8% of an API process's time under load. So the connection is
        held while batches keep coming. One left idle for HOLD_IDLE_SECONDS goes back to the
        pool, and the next checkout pings it first. If the held one turns out to be gone (the
        server restarted) while the batch is still reading, `_run` tries once more on a new one.
        """
        if self._held is not None and asyncio.get_running_loop().time() > self._held_until:
            held, self._held = self._held, None
            await self._release(held)
        if self._held is None:
            self._held = await self.engine.connect()
        return self._held

    async def _release(self, conn: AsyncConnection | None, *, broken: bool = False) -> None:
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            await conn.close()
        except Exception:
            log.warning("closing an accept connection failed", exc_info=True)

    async def _run_sqlite(
        self, batch: list[SendRequest], started: Callable[[], None], *, read_keys: bool = True
    ) -> list[Outcome]:
        """Plan on the loop's thread (retrying while the database is busy), then write."""
        outcomes, writes = await self._plan_sqlite(batch, read_keys)
        return await self._committed(self._submit(writes, started), outcomes)

    def _submit(self, writes: Writes, started: Callable[[], None]) -> Future[None]:
        """Hand a planned batch's writes to the writer thread, at once."""
        statement = (
            batch_statement(writes.messages, writes.keys)
            if writes.messages
            else None  # every request refused or replayed: nothing to write
        )
        return self._writer_thread.submit(self._write_on_thread, statement, started)

    async def _committed(self, job: Future[None], outcomes: list[Outcome]) -> list[Outcome]:
        """Wait until the writer thread has committed a batch: its outcomes."""
        try:
            await asyncio.wrap_future(job, loop=self._loop)
        except sqlite3.IntegrityError as exc:
            if str(exc) == REPLAYED:
                raise KeyInUse() from exc
            # Another process committed one of these idempotency keys after this batch read
            # them: `_write` settles each request alone.
            raise IntegrityError(None, None, exc) from exc
        return outcomes

    async def _plan_sqlite(
        self, batch: list[SendRequest], read_keys: bool
    ) -> tuple[list[Outcome], Writes]:
        """Read what the batch needs and apply the rules.

        Each read is its own snapshot (no transaction around them): the batch holds no lock,
        and what it reads can change before its writes anyway. The one race that matters, an
        idempotency record stored by another process in between, makes the batch's insert
        fail, and `_write` then settles each request alone.
        """
        deadline = asyncio.get_running_loop().time() + BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                return self._plan(batch, read_keys)
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not is_busy(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _plan_now(self, batch: list[SendRequest]) -> tuple[list[Outcome], Writes] | None:
        """One attempt at `_plan_sqlite`: None when the database is busy.

        A WAL reader waits only in rare cases (another connection recovering the WAL): never
        on the loop's thread, always briefly.
        """
        try:
            return self._plan(batch, read_keys=False)
        except (OperationalError, sqlite3.OperationalError) as exc:
            if is_busy(exc):
                return None
            raise

    def _plan(self, batch: list[SendRequest], read_keys: bool) -> tuple[list[Outcome], Writes]:
        assert self._read_engine is not None
        if self._reader is None:
            self._reader = self._read_engine.connect()
        reader = self._reader
        try:
            planned = plan_batch(reader, batch, self.settings, read_keys=read_keys)
            if reader.in_transaction():  # begun by a Core read (WhatsApp windows)
                reader.rollback()
            return planned
        except BaseException:
            self._reopen_reader(reader)  # the next batch reads on a new connection
            raise

    def _reopen_reader(self, reader: Connection) -> None:
        """Let the next batch read on a new connection."""
        self._reader = None
        reader.close()

    def _write_on_thread(
        self, statement: tuple[str, list[Any]] | None, started: Callable[[], None]
    ) -> None:
        """On the writer thread: one batch's writes, on the connection that thread holds.
        `started` comes first: the loop plans the next batch while this one is written."""
        started()
        if statement is None:
            return
        assert self._write_engine is not None
        if self._driver is None:
            driver = self._write_engine.raw_connection()
            try:
                connection = driver.driver_connection
                assert connection is not None
                connection.executescript(SETUP_SQL)
            except BaseException:
                driver.invalidate()
                raise
            self._driver = driver
        try:
            # Outside a transaction (autocommit) the one statement is its own transaction: it
            # waits for the write lock (up to the busy timeout), inserts everything and commits
            # with its fsync, all in one call into SQLite that releases the GIL throughout.
            self._driver.driver_connection.execute(*statement)
        except (sqlite3.IntegrityError, sqlite3.OperationalError):
            raise  # a collision, or a lock held too long: the connection itself is sound
        except BaseException:
            self._close_driver(broken=True)  # the next batch starts on a new connection
            raise

    def _close_driver(self, *, broken: bool = False) -> None:
        if self._driver is not None:
            driver, self._driver = self._driver, None
            if broken:
                driver.invalidate()
            else:
                driver.close()


def _nothing() -> None:
    pass


async def _fail(exc: Exception) -> list[Outcome]:
    raise exc
