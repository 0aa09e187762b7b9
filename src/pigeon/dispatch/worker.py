"""The dispatch worker: claim due messages, hand them to providers, record what happened."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec
import structlog
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.bulk import insert_rows, update_rows
from pigeon.db.tables import delivery_attempts, idempotency_keys, messages
from pigeon.dispatch.backoff import retry_delay
from pigeon.dispatch.cdp_sync import run_sync_jobs
from pigeon.dispatch.claims import claim_due_messages
from pigeon.dispatch.registry import ProviderRegistry
from pigeon.ids import new_token
from pigeon.messages import status
from pigeon.messages.reports import StatusReport, apply_statuses
from pigeon.messages.whatsapp import PLATFORM
from pigeon.providers.base import BODY_LIMIT, Outbound, SendOutcome, provider_error

log = structlog.get_logger("pigeon.worker")

HOUSEKEEPING_EVERY = 30.0
# A round allocates tens of thousands of short-lived objects (rows, request and answer
# entries); the default threshold (700) runs a collection every few hundred of them.
GC_THRESHOLDS = (20_000, 20, 20)
STUCK_ERROR = {
    "groupId": 1,
    "groupName": "HANDSET_ERRORS",
    "id": 5003,
    "name": "EC_VALIDITY_PERIOD_EXPIRED",
    "description": "Message was not delivered within its validity period",
    "permanent": False,
}
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


def _response_text(outcome: SendOutcome) -> str | None:
    """What the provider answered about this message: its own entry of a batch answer."""
    if outcome.raw is not None:
        return msgspec.json.encode(outcome.raw).decode()[:BODY_LIMIT]
    return outcome.call.body if outcome.call else None


def tune_gc_for_batches() -> None:
    """For a process that only dispatches: collect less often, never re-scan start-up objects.

    The modules, tables and compiled statements live as long as the process; frozen, the
    full collections that a worker's allocations trigger no longer walk them each time.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Worker:
    """Runs dispatch rounds until told to stop; wakes early when a message is accepted."""

    def __init__(
        self, engine: AsyncEngine, settings: Settings, registry: ProviderRegistry | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.registry = registry or ProviderRegistry(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_token(4)}"
        self.wake = asyncio.Event()
        self._last_housekeeping = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; the round in progress always finishes."""
        log.info("worker started", worker=self.worker_id, provider=self.settings.provider)
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except Exception:
                log.exception("dispatch round failed", worker=self.worker_id)
                busy = False
            if not busy:
                self.wake.clear()
                await _first_of(stop, self.wake, within=self.settings.worker_poll_interval)
        log.info("worker stopped", worker=self.worker_id)

    async def run_once(self) -> bool:
        """One round: housekeeping when due, polled reports, one claimed batch. True if busy."""
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = loop_time
            await self.housekeeping()
        reports = await self.poll_reports()
        claimed = await claim_due_messages(
            self.engine,
            worker_id=self.worker_id,
            limit=self.settings.worker_batch_size,
            lease_seconds=self.settings.worker_lease_seconds,
        )
        if claimed:
            await self.dispatch(claimed)
        synced = await run_sync_jobs(
            self.engine, self.settings, self.registry, worker_id=self.worker_id
        )
        return bool(claimed) or reports > 0 or synced > 0

    async def poll_reports(self) -> int:
        """Apply reports from providers that have no webhooks (the sandbox)."""
        applied = 0
        for provider in self.registry.polling():
            async with self.engine.begin() as conn:
                reports = await provider.poll_reports(conn=conn)
                moved = await apply_statuses(conn=conn, reports=reports, source="report")
                stale = len(reports) - moved
                metrics.on_commit(
                    conn, partial(metrics.count_reports, provider.name, moved, 0, stale)
                )
                applied += moved
        return applied

    async def dispatch(self, claimed: Sequence[tuple[Outbound, str | None]]) -> None:
        """Send claimed messages, one provider call per account and channel, concurrently."""
        groups: dict[tuple[str, str], list[Outbound]] = defaultdict(list)
        already_sent: list[tuple[Outbound, str]] = []
        for message, provider_message_id in claimed:
            if provider_message_id is not None:
                already_sent.append((message, provider_message_id))
                continue
            owner = message.account_id if message.route == "tenant" else PLATFORM
            groups[(owner, message.channel)].append(message)
        if already_sent:
            await self._move_on(already_sent)
        await asyncio.gather(
            *(self._send_group(owner, group) for (owner, _), group in groups.items())
        )

    async def _send_group(self, owner: str, group: list[Outbound]) -> None:
        channel = group[0].channel
        async with self.engine.begin() as conn:  # may create the platform webhook token
            route = await self.registry.route_for(conn=conn, owner=owner, channel=channel)
        if route is None:
            outcomes = [
                SendOutcome(m.message_id, status.REJECTED, error=NO_ACCOUNT_ERROR) for m in group
            ]
            await self._record(group, outcomes, provider_name="none")
            return
        routed = await route.send(group)
        passed = routed.passed
        for leg in routed.legs:
            await self._record(group, leg.outcomes, provider_name=leg.provider, passed=passed)
            passed = []
            log.info(
                "batch sent",
                provider=leg.provider,
                owner=owner,
                channel=channel,
                count=len(leg.outcomes),
                accepted=sum(not o.transient and not o.status.is_final for o in leg.outcomes),
            )

    async def _record(
        self,
        group: Sequence[Outbound],
        outcomes: Sequence[SendOutcome],
        *,
        provider_name: str,
        passed: Sequence[tuple[str, SendOutcome]] = (),
    ) -> None:
        """One transaction: an attempt row per message, then new statuses or retries, in bulk.

        `passed` are earlier providers' transient answers that the route failed over from:
        attempt rows only.
        """
        now = utcnow()
        answers = [*passed, *((provider_name, outcome) for outcome in outcomes)]
        attempts = [
            {
                "message_id": outcome.message_id,
                "worker_id": self.worker_id,
                "provider": provider,
                "at": now,
                "duration_ms": outcome.call.duration_ms if outcome.call else None,
                "outcome": (
                    "transient"
                    if outcome.transient
                    else "rejected"
                    if outcome.status.is_final and outcome.status.group != status.Group.DELIVERED
                    else "accepted"
                ),
                "http_status": outcome.call.http_status if outcome.call else None,
                "response": _response_text(outcome),
                "error": outcome.error,
            }
            for provider, outcome in answers
        ]
        done = [o for o in outcomes if not o.transient]
        later = [o for o in outcomes if o.transient]
        async with self.engine.begin() as conn:
            await self._sent(conn, done, provider_name, now)
            await self._retry_later(conn, later)
            # After the messages are locked and updated: the attempts' foreign-key checks then
            # find rows this transaction already holds, instead of locking each one first.
            await conn.run_sync(insert_rows, delivery_attempts, attempts)

    async def _sent(
        self,
        conn: AsyncConnection,
        outcomes: Sequence[SendOutcome],
        provider_name: str,
        now: datetime,
    ) -> None:
        """The provider holds these now: en route (whatever pending name it gave), or refused."""
        if not outcomes:
            return
        sent = {
            o.message_id: {
                "provider": provider_name,
                "provider_message_id": o.provider_message_id,
                "sent_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            for o in outcomes
        }
        reports = [
            StatusReport(
                o.message_id, o.status if o.status.is_final else status.ENROUTE, o.error, o.raw
            )
            for o in outcomes
        ]
        await apply_statuses(conn=conn, reports=reports, source="worker", sent=sent, attempted=True)

    async def _retry_later(self, conn: AsyncConnection, outcomes: Sequence[SendOutcome]) -> None:
        """Not taken this time: try again after a backoff, or end EXPIRED when out of tries."""
        if not outcomes:
            return
        now = utcnow()
        rows = await conn.execute(
            select(messages.c.id, messages.c.attempts, messages.c.created_at).where(
                messages.c.id.in_([o.message_id for o in outcomes])
            )
        )
        known = {row.id: row for row in rows}
        validity = timedelta(seconds=self.settings.message_validity_seconds)
        expired: list[StatusReport] = []
        counted: dict[str, dict[str, Any]] = {}
        retries: list[dict[str, Any]] = []
        for outcome in outcomes:
            row = known.get(outcome.message_id)
            if row is None:
                continue
            attempts = row.attempts + 1
            error = {**(outcome.error or {}), "attempts": attempts}
            if attempts >= self.settings.max_attempts or now - row.created_at >= validity:
                expired.append(StatusReport(outcome.message_id, status.EXPIRED, error))
                counted[outcome.message_id] = {"attempts": attempts}
                continue
            delay = retry_delay(attempts, retry_after=outcome.retry_after)
            retries.append(
                {
                    "id": outcome.message_id,
                    "attempts": attempts,
                    "error": error,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "updated_at": now,
                    "next_attempt_at": now + timedelta(seconds=delay),
                }
            )
        if expired:
            await apply_statuses(conn=conn, reports=expired, source="worker", sent=counted)
        await conn.run_sync(update_rows, messages, retries)

    async def _move_on(self, already_sent: Sequence[tuple[Outbound, str]]) -> None:
        """Messages the provider accepted before (their id is stored): never send them again."""
        now = utcnow()
        skipped = [
            {
                "message_id": message.message_id,
                "worker_id": self.worker_id,
                "provider": "-",
                "at": now,
                "outcome": "skipped",
                "error": {"description": f"already accepted as {provider_message_id}"},
            }
            for message, provider_message_id in already_sent
        ]
        reports = [StatusReport(message.message_id, status.ENROUTE) for message, _ in already_sent]
        released = {
            message.message_id: {"lease_owner": None, "lease_expires_at": None}
            for message, _ in already_sent
        }
        async with self.engine.begin() as conn:
            await apply_statuses(conn=conn, reports=reports, source="worker", sent=released)
            await conn.run_sync(insert_rows, delivery_attempts, skipped)

    async def housekeeping(self) -> None:
        """Drop expired idempotency keys; end messages pending past their validity as EXPIRED."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self.settings.message_validity_seconds)
        async with self.engine.begin() as conn:
            await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at < now))
            stuck = await conn.execute(
                select(messages.c.id)
                .where(
                    messages.c.group_id == status.Group.PENDING,
                    messages.c.created_at < cutoff,
                    or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
                )
                .limit(1000)
            )
            reports = [StatusReport(row.id, status.EXPIRED, STUCK_ERROR) for row in stuck]
            await apply_statuses(conn=conn, reports=reports, source="housekeeping")

    async def aclose(self) -> None:
        """Release what the worker holds (the providers' HTTP client)."""
        await self.registry.aclose()
