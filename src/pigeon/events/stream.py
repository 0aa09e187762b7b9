"""The stream's fan-out: each API process tails the events table for its subscribers.

Every API process has one hub. While anyone is subscribed, the hub reads the events written
since it last looked (by `seq`, the order they were written in) for the accounts subscribed
to it, and hands each subscriber its tenant's notifications. The table is the source of
truth, so an event written by any process, a worker or another API process, reaches every
process's subscribers. On PostgreSQL the writing transaction's NOTIFY wakes the hub at once
(LISTEN on its own connection); the hub also looks every STREAM_POLL seconds, which is all
SQLite (one server process) needs.

PostgreSQL hands out `seq` values when rows are inserted, not when they commit: a
transaction holding a lower value can commit after a higher one was read. The hub remembers
the values it skipped and asks for them again for GAP_WAIT seconds before giving them up.

A subscriber's queue is bounded: a client that does not read is dropped (the handler closes
it with 1008) instead of holding memory, and never slows the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.db.errors import unavailable
from pigeon.db.tables import events
from pigeon.events.service import NOTIFY_CHANNEL

log = structlog.get_logger("pigeon.stream")

STREAM_POLL = 0.25
GAP_WAIT = 5.0
PAGE = 1000
QUEUE_SIZE = 1000


def epoch_ms(moment: Any) -> str:
    return str(int(moment.timestamp() * 1000))


@dataclass(eq=False)
class Subscriber:
    """One stream client: its tenant and its bounded queue of encoded notifications."""

    account_id: str
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, message: bytes) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed.set()


class StreamHub:
    """Tails the events table for the accounts subscribed in this process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.wake = asyncio.Event()
        self._last: int | None = None  # the highest seq read
        self._gaps: dict[int, float] = {}  # seq values skipped, and when they were first missed
        self._listener: AsyncConnection | None = None

    def subscribe(self, account_id: str) -> Subscriber:
        subscriber = Subscriber(account_id)
        self.subscribers.setdefault(account_id, set()).add(subscriber)
        self.wake.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = self.subscribers.get(subscriber.account_id)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self.subscribers[subscriber.account_id]

    async def run(self, stop: asyncio.Event) -> None:
        """Fan events out until `stop` is set."""
        try:
            while not stop.is_set():
                full = False
                try:
                    if self._last is None:
                        await self._start()  # again after a failure (the database was away)
                    full = await self.fan_out()
                except Exception as exc:
                    if unavailable(exc) is None:  # a sick database is logged once an incident
                        log.exception("stream fan-out failed")
                if not full:
                    self.wake.clear()
                    waiters = [
                        asyncio.ensure_future(stop.wait()),
                        asyncio.ensure_future(self.wake.wait()),
                    ]
                    await asyncio.wait(
                        waiters, timeout=STREAM_POLL, return_when=asyncio.FIRST_COMPLETED
                    )
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            if self._listener is not None:
                with contextlib.suppress(Exception):
                    await self._listener.close()

    async def _start(self) -> None:
        if self.engine.dialect.name == "postgresql" and self._listener is None:
            self._listener = await self.engine.connect()
            raw = await self._listener.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake.set())
        async with self.engine.connect() as conn:
            self._last = (await conn.execute(select(func.max(events.c.seq)))).scalar() or 0

    async def fan_out(self) -> bool:
        """Read what was written since the last look; True if a full page came back."""
        if not self.subscribers or self._last is None:
            # Nobody listens: skip ahead, so a first subscriber gets only what comes after it.
            self._gaps.clear()
            if self._last is not None:
                async with self.engine.connect() as conn:
                    latest = (await conn.execute(select(func.max(events.c.seq)))).scalar()
                self._last = max(self._last, latest or 0)
            return False
        now = time.monotonic()
        self._gaps = {seq: at for seq, at in self._gaps.items() if now - at < GAP_WAIT}
        query = select(
            events.c.seq,
            events.c.account_id,
            events.c.type,
            events.c.message_id,
            events.c.created_at,
        )
        newer = events.c.seq > self._last
        query = query.where(
            or_(newer, events.c.seq.in_(sorted(self._gaps))) if self._gaps else newer
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(events.c.seq).limit(PAGE))).all()
        for row in rows:
            self._gaps.pop(row.seq, None)
            if row.seq > self._last:
                self._gaps.update((missing, now) for missing in range(self._last + 1, row.seq))
                self._last = row.seq
            for subscriber in self.subscribers.get(row.account_id, ()):
                subscriber.offer(_notification(row))
        return len(rows) >= PAGE


_encoder = msgspec.json.Encoder()


def _notification(row: Any) -> bytes:
    return _encoder.encode(
        {
            "type": "notification",
            "event": row.type,
            "data": row.message_id,
            "timestamp": epoch_ms(row.created_at),
        }
    )
