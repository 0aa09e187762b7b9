"""The dispatch worker: claim due messages, hand them to providers, record what happened."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.engine import reader_for
from pigeon.db.errors import unavailable
from pigeon.db.writer import Writer, writer_for
from pigeon.dispatch import outcomes as writes
from pigeon.dispatch.cdp_sync import run_sync_jobs
from pigeon.dispatch.claims import Claimed, claim_due_messages
from pigeon.dispatch.registry import ProviderRegistry
from pigeon.ids import new_token
from pigeon.messages import status
from pigeon.messages.reports import StatusReport, decide_moves, read_states
from pigeon.messages.whatsapp import PLATFORM
from pigeon.providers.base import Outbound, Provider, SendOutcome, provider_error

log = structlog.get_logger("pigeon.worker")
T = TypeVar("T")

HOUSEKEEPING_EVERY = 30.0
# A round's status changes are written WRITE_CHUNK messages per transaction, CHUNK_GAP seconds
# apart: on SQLite the accepts (another process) wait for the file's lock at most one chunk's
# write (a few milliseconds) and take their turn in the gap, instead of waiting 40-100 ms for
# a round's 500 or 1,000.
WRITE_CHUNK = 250
CHUNK_GAP = 0.001
ROUND_GAP = 0.02  # seconds between rounds that found less than a full batch
# A round allocates tens of thousands of short-lived objects (rows, request and answer
# entries); the default threshold (700) runs a collection every few hundred of them.
GC_THRESHOLDS = (20_000, 20, 20)
NO_ACCOUNT_ERROR = provider_error(
    "infobip",
    id="NO_PROVIDER_ACCOUNT",
    name="NO_PROVIDER_ACCOUNT",
    description="the tenant's Infobip extension was disabled before the message was sent",
    permanent=True,
)


async def _first_of(*events: asyncio.Event, within: float) -> None:
    """Wait until any of the events is set, or the time passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def tune_gc_for_batches() -> None:
    """For a process that only dispatches: collect less often, never re-scan start-up objects.

    The modules, tables and compiled statements live as long as the process; frozen, the
    full collections that a worker's allocations trigger no longer walk them each time.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _polled(conn: Connection, provider: Provider) -> tuple[list[StatusReport], Sequence[Any]]:
    """A polled provider's reports and their rows' state, in one call on the reader."""
    reports = provider.poll_reports(conn)
    return reports, read_states(conn, [r.message_id for r in reports])


def _chunks(items: Sequence[T]) -> list[list[T]]:
    return [list(items[i : i + WRITE_CHUNK]) for i in range(0, len(items), WRITE_CHUNK)]


class Worker:
    """Runs dispatch rounds until told to stop; wakes early when a message is accepted."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        registry: ProviderRegistry | None = None,
        *,
        writer: Writer | None = None,
        reader: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        # Where the rows a status change is decided on are read, before its write transaction
        # (on SQLite a read-only engine: the main one's transactions take the write lock).
        self.reader = reader or reader_for(engine, settings.database_url)
        self._owns_reader = reader is None and self.reader is not engine
        self.settings = settings
        self.registry = registry or ProviderRegistry(settings)
        # The process's writer (shared with the accept path in `pigeon serve`), or its own.
        self._polled = {provider.name for provider in self.registry.polling()}
        self._owns_writer = writer is None
        self.writer = writer or writer_for(engine, settings.database_url)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_token(4)}"
        self.wake = asyncio.Event()
        self._last_housekeeping = 0.0
        self._next_sync_check = 0.0
        self._claimed = 0  # in the last round
        # When the reports of the batches a polled provider (the sandbox) took are due, in
        # loop time, until a poll that began after that: an idle worker wakes for them rather
        # than at its next poll.
        self._reports_due: deque[float] = deque()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; the round in progress always finishes."""
        log.info("worker started", worker=self.worker_id, provider=self.settings.provider)
        while not stop.is_set():
            # Cleared before the round, not after it: a message accepted while the round runs
            # (after its claim) leaves the event set, and the next round starts at once.
            self.wake.clear()
            try:
                busy = await self.run_once()
            except Exception as exc:
                if unavailable(exc) is None:  # a sick database is logged once an incident
                    log.exception("dispatch round failed", worker=self.worker_id)
                busy = False
            if not busy:
                await _first_of(stop, self.wake, within=self._idle_wait())
            elif self._claimed < self.settings.worker_batch_size:
                # Keeping up: let the next batch grow for a moment instead of chasing every
                # accepted message. A round costs about as much for one message as for
                # hundreds (its transactions, the provider's request).
                await _first_of(stop, within=ROUND_GAP)
        log.info("worker stopped", worker=self.worker_id)

    def _idle_wait(self) -> float:
        """How long an idle worker sleeps unless woken: its poll interval, or until a polled
        provider's report is due (at once when one is due that no poll has looked for)."""
        wait = self.settings.worker_poll_interval
        if self._reports_due:
            now = asyncio.get_running_loop().time()
            wait = min(wait, max(0.0, self._reports_due[0] - now))
        return wait

    def _drop_polled(self, polled_at: float) -> None:
        """Forget the reports that were due when a poll began: it saw them."""
        while self._reports_due and self._reports_due[0] <= polled_at:
            self._reports_due.popleft()

    async def run_once(self) -> bool:
        """One round: housekeeping when due, polled reports, one claimed batch. True if busy."""
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = loop_time
            await self.housekeeping()
        polled_at = asyncio.get_running_loop().time()
        reports = await self.poll_reports()
        self._drop_polled(polled_at)
        claimed = await self.writer.transaction(
            claim_due_messages,
            worker_id=self.worker_id,
            limit=self.settings.worker_batch_size,
            lease_seconds=self.settings.worker_lease_seconds,
        )
        self._claimed = len(claimed)
        if claimed:
            await self.dispatch(claimed)
        synced = 0
        if not claimed or loop_time >= self._next_sync_check:
            # While messages keep coming the rounds follow each other closely: look for CDP
            # sync jobs once per poll interval then, not in every round.
            synced = await run_sync_jobs(
                self.engine,
                self.settings,
                self.registry,
                worker_id=self.worker_id,
                writer=self.writer,
            )
            if not synced:
                self._next_sync_check = loop_time + self.settings.worker_poll_interval
        return bool(claimed) or reports > 0 or synced > 0

    async def poll_reports(self) -> int:
        """Apply reports from providers that have no webhooks (the sandbox)."""
        applied = 0
        for provider in self.registry.polling():
            # The reports and the rows' state from one snapshot, decided outside the write
            # transaction, which then only checks that the rows are still so.
            async with self.reader.connect() as conn:
                reports, rows = await conn.run_sync(_polled, provider)
            by_id = {row.id: row for row in rows}
            for i, chunk in enumerate(_chunks(reports)):
                if i:
                    await asyncio.sleep(CHUNK_GAP)
                decided = decide_moves(
                    [by_id[r.message_id] for r in chunk if r.message_id in by_id],
                    reports=chunk,
                    source="report",
                )
                applied += await self.writer.transaction(
                    writes.apply_polled_reports, provider.name, chunk, decided
                )
        return applied

    async def dispatch(self, claimed: Sequence[Claimed]) -> None:
        """Send claimed messages, one provider call per account and channel, concurrently."""
        groups: dict[tuple[str, str], list[Outbound]] = defaultdict(list)
        already_sent: list[tuple[Outbound, str]] = []
        # Each row's state as claimed, taken by the first record of its outcome (a later one,
        # after a failover, reads the row as that record left it).
        states = {}
        for message, provider_message_id, state in claimed:
            if provider_message_id is not None:
                already_sent.append((message, provider_message_id))
                continue
            owner = message.account_id if message.route == "tenant" else PLATFORM
            groups[(owner, message.channel)].append(message)
            states[message.message_id] = state
        if already_sent:
            await self._move_on(already_sent)
        await asyncio.gather(
            *(self._send_group(owner, group, states) for (owner, _), group in groups.items())
        )

    async def _send_group(self, owner: str, group: list[Outbound], states: dict[str, Any]) -> None:
        channel = group[0].channel
        # Only a first use writes (it may create the platform's webhook token): the connection
        # begins its transaction, and takes SQLite's write lock, at its first statement.
        async with self.engine.connect() as conn:
            route = await self.registry.route_for(conn=conn, owner=owner, channel=channel)
            await conn.commit()
        if route is None:
            outcomes = [
                SendOutcome(m.message_id, status.REJECTED, error=NO_ACCOUNT_ERROR) for m in group
            ]
            await self._record(group, outcomes, provider_name="none", states=states)
            return
        routed = await route.send(group)
        passed = routed.passed
        for leg in routed.legs:
            await self._record(
                group, leg.outcomes, provider_name=leg.provider, passed=passed, states=states
            )
            passed = []
            log.info(
                "batch sent",
                provider=leg.provider,
                owner=owner,
                channel=channel,
                count=len(leg.outcomes),
                accepted=sum(not o.transient and not o.status.is_final for o in leg.outcomes),
            )
        if any(leg.provider in self._polled for leg in routed.legs):
            # Counted from after the messages were recorded as sent (their `sent_at`, from
            # which the sandbox's reports are due): a poll that begins then sees them.
            due = asyncio.get_running_loop().time() + self.settings.sandbox_report_delay
            self._reports_due.append(due)

    async def _record(
        self,
        group: Sequence[Outbound],
        outcomes: Sequence[SendOutcome],
        *,
        provider_name: str,
        passed: Sequence[tuple[str, SendOutcome]] = (),
        states: dict[str, Any],
    ) -> None:
        """An attempt row per message, then new statuses or retries, in bulk: one transaction
        per WRITE_CHUNK messages.

        `passed` are earlier providers' transient answers that the route failed over from:
        attempt rows only. `states`: rows' states as claimed, each taken (removed) here by its
        message's outcome; the others are read.
        """
        now = utcnow()
        taken = [o for o in outcomes if not o.transient]
        by_id = {o.message_id: states.pop(o.message_id) for o in taken if o.message_id in states}
        unread = [o.message_id for o in taken if o.message_id not in by_id]
        if unread:
            async with self.reader.connect() as conn:
                rows = await conn.run_sync(read_states, unread)
            by_id.update((row.id, row) for row in rows)
        for i, chunk in enumerate(_chunks(outcomes)):
            if i:
                await asyncio.sleep(CHUNK_GAP)
            decided = None
            chunk_taken = [o for o in chunk if not o.transient]
            if chunk_taken:
                reports, sent = writes.sent_moves(chunk_taken, provider_name, now)
                decided = decide_moves(
                    [by_id[o.message_id] for o in chunk_taken if o.message_id in by_id],
                    reports=reports,
                    source="worker",
                    sent=sent,
                    attempted=True,
                )
            await self.writer.transaction(
                writes.record_outcomes,
                outcomes=chunk,
                passed=passed if i == 0 else (),
                worker_id=self.worker_id,
                provider_name=provider_name,
                settings=self.settings,
                now=now,
                decided=decided,
            )

    async def _move_on(self, already_sent: Sequence[tuple[Outbound, str]]) -> None:
        """Messages the provider accepted before (their id is stored): never send them again."""
        await self.writer.transaction(
            writes.move_on, already_sent=already_sent, worker_id=self.worker_id
        )

    async def housekeeping(self) -> None:
        """Drop expired idempotency keys; end messages pending past their validity as EXPIRED."""
        await self.writer.transaction(writes.housekeeping, settings=self.settings)

    async def aclose(self) -> None:
        """Release what the worker holds (the providers' HTTP client, its own writer)."""
        await self.registry.aclose()
        if self._owns_writer:
            await self.writer.close()
        if self._owns_reader:
            await self.reader.dispose()
