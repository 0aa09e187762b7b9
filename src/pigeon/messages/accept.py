"""The accept path: validated send requests become durable messages, many per commit.

Requests join a queue; one writer takes whatever is waiting, reads what the whole batch needs
in a few queries (idempotency records, recipients, extensions, WhatsApp interactions), applies
the rules to each request, writes every message, first event and idempotency record, and
commits once. Each request is answered when the commit that holds it is done: durable before
the answer, without one commit (and one fsync) per request (group commit).

On SQLite the batch's reads and rules run on a plain sqlite3 connection on the event loop's own
thread; its inserts and COMMIT (with the fsync) run on a writer thread while the loop goes on
parsing requests. On PostgreSQL the batch runs on the async engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog
from sqlalchemy import Connection, delete, select, tuple_
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.bulk import insert_rows, sqlite_insert_statements
from pigeon.db.engine import create_sync_engine, is_busy, is_sqlite
from pigeon.db.lookup import rows_by_key
from pigeon.db.tables import (
    idempotency_keys,
    identities,
    infobip_extensions,
    message_events,
    messages,
    users,
    whatsapp_interactions,
)
from pigeon.errors import Conflict, PigeonError, Unprocessable
from pigeon.idempotency.store import Scope, StoredResponse
from pigeon.ids import new_message_id
from pigeon.messages import status
from pigeon.messages.rules import (
    Draft,
    check_whatsapp_window,
    person_destination,
    platform_sender,
    user_destination,
)
from pigeon.messages.schemas import AcceptedMessage, Channel, SendResponse
from pigeon.messages.whatsapp import PLATFORM

log = structlog.get_logger("pigeon.accept")
MAX_BATCH = 256
SWITCH_INTERVAL = 0.0002  # seconds
BUSY_DEADLINE = 30.0  # seconds a batch waits for SQLite's write lock before failing
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
    scope_id: str | None = None
    fingerprint: str | None = None
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


_RECORD = ("scope", "fingerprint", "status_code", "response_body", "expires_at")


def _ids(items: Sequence[SendRequest], kind: str) -> list[str]:
    return sorted({i.recipient for i in items if i.recipient_type == kind})


def _by_key(conn: Connection, table: Any, key: str, values: list[str]) -> dict[str, Any]:
    return {getattr(row, key): row for row in rows_by_key(conn, table, key, values)}


class _Batch:
    """Everything one batch needs from the database, read in a handful of queries."""

    def __init__(self, conn: Connection, items: Sequence[SendRequest], now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.users = _by_key(conn, users, "id", _ids(items, "user"))
        self.identities = _by_key(conn, identities, "id", _ids(items, "person"))
        accounts = sorted({i.account_id for i in items if i.recipient_type == "person"})
        self.extensions = _by_key(conn, infobip_extensions, "account_id", accounts)
        self.records: dict[str, Any] = {}
        self.expired: list[str] = []  # scopes whose old record the batch may replace
        scopes = [i.scope_id for i in items if i.scope_id]
        for record in rows_by_key(conn, idempotency_keys, "scope", scopes, _RECORD):
            if record.expires_at > now:
                self.records[record.scope] = record
            else:
                self.expired.append(record.scope)

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
    """The rows a planned batch inserts: its messages, their first events, idempotency records."""

    now: datetime
    expired: list[str]  # scopes of expired idempotency records to replace
    messages: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)


def accept_batch(
    conn: Connection, items: Sequence[SendRequest], settings: Settings
) -> list[Outcome]:
    """Accept a batch in the caller's transaction: an outcome per request, in order."""
    outcomes, writes = plan_batch(conn, items, settings)
    write_batch(conn, writes)
    return outcomes


def plan_batch(
    conn: Connection, items: Sequence[SendRequest], settings: Settings
) -> tuple[list[Outcome], Writes]:
    """Read what the batch needs and apply the rules: each request's outcome, and the rows
    to insert for those accepted (by `write_batch`, in the same transaction)."""
    now = utcnow()
    batch = _Batch(conn, items, now)
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
    return _rows(items, outcomes, Writes(now, batch.expired), settings)


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
    message_rows, event_rows, key_rows = writes.messages, writes.events, writes.keys
    results: list[Outcome] = []
    expires = now + timedelta(seconds=settings.idempotency_ttl_seconds)
    for item, outcome in zip(items, outcomes, strict=True):
        if not isinstance(outcome, Draft):
            results.append(outcome)
            continue
        message_id = new_message_id()
        message_rows.append(_message_row(message_id, outcome, now))
        event_rows.append(
            {
                "message_id": message_id,
                "status_id": status.ACCEPTED.id,
                "source": "api",
                "at": now,
            }
        )
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
        if item.scope is not None:
            account_id, method, path, key = item.scope
            key_rows.append(
                {
                    "scope": item.scope_id,
                    "account_id": account_id,
                    "method": method,
                    "path": path,
                    "key": key,
                    "fingerprint": item.fingerprint,
                    "status_code": 200,
                    "response_body": body.decode(),
                    "created_at": now,
                    "expires_at": expires,
                }
            )
        results.append(StoredResponse(200, body, replayed=False))
    return results, writes


def write_batch(conn: Connection, writes: Writes) -> None:
    """Insert a planned batch's rows, in the caller's transaction."""
    insert_rows(conn, messages, writes.messages)
    insert_rows(conn, message_events, writes.events)
    _delete_expired(conn, writes)
    insert_rows(conn, idempotency_keys, writes.keys)


def _delete_expired(conn: Connection, writes: Writes) -> None:
    """Remove the expired idempotency records the batch replaces. Only expired ones: a live
    record makes the insert fail (see `AcceptPipeline._write`)."""
    if writes.expired:
        conn.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.scope.in_(writes.expired),
                idempotency_keys.c.expires_at <= writes.now,
            )
        )


def _sqlite_statements(conn: Connection, writes: Writes) -> list[tuple[str, list[Any]]]:
    """The batch's inserts for the writer thread (an expired record is deleted here first)."""
    _delete_expired(conn, writes)
    return [
        *sqlite_insert_statements(messages, writes.messages),
        *sqlite_insert_statements(message_events, writes.events),
        *sqlite_insert_statements(idempotency_keys, writes.keys),
    ]


def _insert_and_commit(conn: Connection, statements: list[tuple[str, list[Any]]]) -> None:
    """The SQLite writer thread's part of a batch: its inserts, then COMMIT with its fsync.

    Straight on the driver's connection, a few calls in all, each of which releases the GIL
    for its whole run. (SQLAlchemy's own commit, which follows on the loop, then finds no
    transaction open and does nothing; after an error, its rollback undoes the inserts.)
    """
    driver = conn.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        for sql, parameters in statements:
            cursor.execute(sql, parameters)
    finally:
        cursor.close()
    driver.commit()


def _message_row(message_id: str, draft: Draft, now: datetime) -> dict[str, Any]:
    # The columns a new message sets; the rest (error, provider, lease, sent_at...) start NULL.
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
        "status_id": status.ACCEPTED.id,
        "group_id": status.ACCEPTED.groupId,
        "attempts": 0,
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
        self._stopping = False
        # SQLite: the batch's reads and rules run on the event loop's thread; its inserts (a
        # few multi-row statements) and its COMMIT run on a writer thread: a few calls, each
        # of which releases the GIL for its whole run (WAL pages, fsync).
        self._sync_engine = create_sync_engine(settings.database_url) if is_sqlite(engine) else None
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="pigeon-sqlite-writer")
        self._sqlite: Connection | None = None  # held across batches; reopened after an error

    def start(self) -> None:
        """Start the writer (in the app's lifespan)."""
        if self._sync_engine is not None:
            # The writer thread takes the GIL back once per batch, when its COMMIT is done; by
            # default it could wait 5 ms for a busy loop to hand it over.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._writer = asyncio.create_task(self._write_forever())

    async def stop(self) -> None:
        """Answer what is queued, then stop the writer."""
        self._stopping = True
        self._ready.set()
        if self._writer is not None:
            await self._writer
        self._writer_thread.shutdown(wait=True)
        if self._sqlite is not None:
            self._sqlite.close()
        if self._sync_engine is not None:
            self._sync_engine.dispose()

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
            item.future = asyncio.get_running_loop().create_future()
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
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._write(batch)

    async def _write(self, batch: list[SendRequest]) -> None:
        try:
            try:
                outcomes = await self._run(batch)
            except IntegrityError:
                # Another process stored one of these idempotency keys first: settle each
                # alone, so the one that collided replays the other's answer.
                outcomes = [await self._alone(item) for item in batch]
        except Exception as exc:
            log.exception("accept batch failed", size=len(batch))
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(outcome)
        if self.on_commit is not None:
            self.on_commit()

    async def _alone(self, item: SendRequest) -> Outcome:
        for _ in range(2):
            try:
                return (await self._run([item]))[0]
            except IntegrityError:
                continue
        return Conflict(
            "the idempotency-key is being used concurrently; retry",
            code="idempotency_request_in_flight",
            headers={"Retry-After": "1"},
        )

    async def _run(self, batch: list[SendRequest]) -> list[Outcome]:
        if self._sync_engine is not None:
            return await self._run_sqlite_when_free(batch)
        async with self.engine.begin() as conn:
            return await conn.run_sync(accept_batch, batch, self.settings)

    async def _run_sqlite_when_free(self, batch: list[SendRequest]) -> list[Outcome]:
        """Run the batch as soon as no other writer (the worker, another process) holds SQLite."""
        deadline = asyncio.get_running_loop().time() + BUSY_DEADLINE
        pause = 0.001
        while True:
            try:
                return await self._run_sqlite(batch)
            except OperationalError as exc:
                if not is_busy(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def _run_sqlite(self, batch: list[SendRequest]) -> list[Outcome]:
        """Read and apply the rules on the loop's thread; insert and commit on the writer thread.

        While the writer thread works in SQLite and waits for the disk, the loop goes on
        parsing the requests that will make the next batch.
        """
        assert self._sync_engine is not None
        if self._sqlite is None:
            self._sqlite = self._sync_engine.connect()
        conn = self._sqlite
        try:
            with conn.begin():  # BEGIN IMMEDIATE: fails at once (busy) if another writer holds it
                outcomes, writes = plan_batch(conn, batch, self.settings)
                statements = _sqlite_statements(conn, writes)
                await asyncio.get_running_loop().run_in_executor(
                    self._writer_thread, _insert_and_commit, conn, statements
                )
        except sqlite3.IntegrityError as exc:
            # Raised by the driver on the writer thread: the same collision as below.
            raise IntegrityError(None, None, exc) from exc
        except (IntegrityError, OperationalError) as exc:
            if not isinstance(exc, IntegrityError) and not is_busy(exc):
                self._reopen(conn)
            raise
        except BaseException:
            self._reopen(conn)
            raise
        return outcomes

    def _reopen(self, conn: Connection) -> None:
        """Let the next batch start on a new connection."""
        self._sqlite = None
        conn.close()
