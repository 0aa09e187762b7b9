"""The accept path: validated send requests become durable messages, many per commit.

Requests join a queue; a writer takes whatever is waiting as one batch, reads what the whole
batch needs in a few queries, applies the rules to each request (`plan`), writes every
message, first event and idempotency record, and commits once. Each request is answered when
the commit that holds it is done: durable before the answer, without one commit (and one
fsync) per request (group commit).

This module is the domain's part: the queue, the idempotency keys in flight, and what to do
when a batch's insert finds a key already stored. How and when a batch is written is each
engine's writer (`sqlite_accept`, `pg_accept`), behind `AcceptWriter`: it says when it has
room for the next batch, writes batches, and translates its driver's errors into KeyInUse
(a key of the batch has a live record: plan again reading them, to replay their answers) and
KeyCollision (another process stored a key after the batch read them: settle each alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from pigeon import metrics
from pigeon.db.errors import unavailable
from pigeon.errors import Conflict, PigeonError
from pigeon.idempotency.store import KeyInUse, Scope, StoredResponse
from pigeon.messages.plan import KeyCollision, Outcome, SendRequest

__all__ = ["AcceptPipeline", "AcceptWriter", "SendRequest"]

log = structlog.get_logger("pigeon.accept")
MAX_BATCH = 256


class AcceptWriter(Protocol):
    """One engine's way of writing batches of sends (`sqlite_accept`, `pg_accept`)."""

    def start(self, on_room: Callable[[], None]) -> None:
        """Begin; call `on_room` whenever `has_room` may have become true."""

    def has_room(self, queued: int, in_flight: int) -> bool:
        """Whether to hand over a batch now, with `queued` sends waiting and `in_flight`
        batches handed over and not yet answered."""

    def write(self, batch: list[SendRequest]) -> Awaitable[list[Outcome]]:
        """Start writing a batch planned as if its keys were new: its outcomes once durable.
        Raises KeyInUse or KeyCollision (nothing written)."""

    async def rewrite(self, batch: list[SendRequest]) -> list[Outcome]:
        """Plan a batch reading its idempotency records, and write it: its outcomes."""

    async def close(self) -> None:
        """Release connections and threads (nothing is in flight any more)."""


class AcceptPipeline:
    """Group commit for sends: one writer, many waiting requests, one commit per batch."""

    def __init__(
        self, writer: AcceptWriter, *, on_commit: Callable[[], None] | None = None
    ) -> None:
        self.writer = writer
        self.on_commit = on_commit
        self._queue: list[SendRequest] = []
        self._ready = asyncio.Event()
        self._in_flight: set[Scope] = set()
        self._feeder: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._writing = 0  # batches handed to the writer and not yet answered
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the app's loop, once started

    def start(self) -> None:
        """Start taking batches (in the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self.writer.start(self._room)
        self._feeder = self._loop.create_task(self._feed_forever())

    async def stop(self) -> None:
        """Answer what is queued, then stop the writer."""
        self._stopping = True
        self._ready.set()
        if self._feeder is not None:
            await self._feeder
        await self.writer.close()

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

    async def _feed_forever(self) -> None:
        while not (self._stopping and not self._queue):
            await self._ready.wait()
            self._ready.clear()
            self._feed()
        if self._batches:
            await asyncio.wait(self._batches)

    def _room(self) -> None:
        """The writer may take another batch."""
        self._feed()
        if self._stopping:
            self._ready.set()

    def _feed(self) -> None:
        """Hand batches to the writer while it has room for them."""
        while self._queue and self.writer.has_room(len(self._queue), self._writing):
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                run = self.writer.write(batch)
            except Exception as exc:
                run = _fail(exc)  # `_answer` answers the batch's requests with it
            task = (self._loop or asyncio.get_running_loop()).create_task(self._answer(batch, run))
            self._writing += 1
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _answer(self, batch: list[SendRequest], run: Awaitable[list[Outcome]]) -> None:
        try:
            try:
                outcomes = await run
            except KeyInUse:
                outcomes = await self._settle(batch, replayed=True)
            except KeyCollision:
                outcomes = await self._settle(batch, replayed=False)
        except Exception as error:
            exc: Exception = unavailable(error) or error  # a sick database: 503, logged once
            if exc is error:
                log.exception("accept batch failed", size=len(batch))
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._writing -= 1  # the writer is free for the next batch
            self._room()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(outcome)
        metrics.count_accepted(batch, outcomes)
        if self.on_commit is not None:
            self.on_commit()

    async def _settle(self, batch: list[SendRequest], *, replayed: bool) -> list[Outcome]:
        """The outcomes of a batch whose insert failed on an idempotency key."""
        if replayed:
            # The batch was planned without reading its idempotency records, and one of its
            # keys has a live record (a retried request): plan it again, reading them.
            try:
                return await self.writer.rewrite(batch)
            except (KeyCollision, KeyInUse):
                pass
        # Another process stored one of these idempotency keys after the batch read them:
        # settle each alone, so the one that collided replays the other's answer.
        return [await self._alone(item) for item in batch]

    async def _alone(self, item: SendRequest) -> Outcome:
        for _ in range(2):
            try:
                return (await self.writer.rewrite([item]))[0]
            except (KeyCollision, KeyInUse):
                continue
        return Conflict(
            "the idempotency-key is being used concurrently; retry",
            code="idempotency_request_in_flight",
            headers={"Retry-After": "1"},
        )


async def _fail(exc: Exception) -> list[Outcome]:
    raise exc
