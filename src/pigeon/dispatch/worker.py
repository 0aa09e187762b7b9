"""The dispatch worker: claim due messages, hand them to providers, record what happened."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import idempotency_keys, messages
from pigeon.dispatch.backoff import retry_delay
from pigeon.ids import new_token
from pigeon.messages import status
from pigeon.messages.reports import StatusReport, apply_status
from pigeon.providers.base import Outbound, Provider, SendOutcome, TransientError
from pigeon.providers.sandbox import SandboxProvider

log = structlog.get_logger("pigeon.worker")

HOUSEKEEPING_EVERY = 30.0
STUCK_ERROR = {
    "groupId": 1,
    "groupName": "HANDSET_ERRORS",
    "id": 5003,
    "name": "EC_VALIDITY_PERIOD_EXPIRED",
    "description": "Message was not delivered within its validity period",
    "permanent": False,
}


async def _first_of(*events: asyncio.Event, within: float) -> None:
    """Wait until any of the events is set, or the timeout passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def make_provider(settings: Settings) -> Provider:
    """The provider the settings select."""
    return SandboxProvider(report_delay=settings.sandbox_report_delay)


class Worker:
    """Runs dispatch rounds until told to stop; wakes early when a message is accepted."""

    def __init__(self, engine: AsyncEngine, settings: Settings, provider: Provider) -> None:
        self.engine = engine
        self.settings = settings
        self.provider = provider
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_token(4)}"
        self.wake = asyncio.Event()
        self._last_housekeeping = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; the round in progress always finishes."""
        log.info("worker started", worker=self.worker_id, provider=self.provider.name)
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except Exception:
                log.exception("dispatch round failed")
                busy = False
            if not busy:
                self.wake.clear()
                await _first_of(stop, self.wake, within=self.settings.worker_poll_interval)
        log.info("worker stopped", worker=self.worker_id)

    async def run_once(self) -> bool:
        """One round: housekeeping when due, reports, then one claimed batch. True if busy."""
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = loop_time
            await self.housekeeping()
        async with self.engine.begin() as conn:
            reports = await self.provider.poll_reports(conn=conn)
            for report in reports:
                await apply_status(conn=conn, report=report, source="report")
        batch = await self.claim_due_messages()
        if batch:
            await self.dispatch(batch)
        return bool(batch) or bool(reports)

    async def claim_due_messages(self) -> list[Outbound]:
        """Lease a batch of due messages to this worker (SKIP LOCKED where the engine has it)."""
        now = utcnow()
        due = (
            select(messages.c.id)
            .where(
                messages.c.status_id == status.ACCEPTED.id,
                messages.c.next_attempt_at <= now,
                or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
            )
            .order_by(messages.c.next_attempt_at)
            .limit(self.settings.worker_batch_size)
            .with_for_update(skip_locked=True)
        )
        lease_until = now + timedelta(seconds=self.settings.worker_lease_seconds)
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                update(messages)
                .where(messages.c.id.in_(due.scalar_subquery()))
                .values(lease_owner=self.worker_id, lease_expires_at=lease_until)
                .returning(
                    messages.c.id,
                    messages.c.account_id,
                    messages.c.channel,
                    messages.c.destination,
                    messages.c.sender,
                    messages.c.content,
                    messages.c.route,
                )
            )
            return [
                Outbound(r.id, r.account_id, r.channel, r.destination, r.sender, r.content, r.route)
                for r in rows
            ]

    async def dispatch(self, batch: Sequence[Outbound]) -> None:
        """Send claimed messages, grouped so each provider call is one account and channel."""
        groups: dict[tuple[str, str, str], list[Outbound]] = defaultdict(list)
        for message in batch:
            owner = message.account_id if message.route == "tenant" else "platform"
            groups[(owner, message.channel, message.route)].append(message)
        for group in groups.values():
            await self._send_group(group)

    async def _send_group(self, group: list[Outbound]) -> None:
        try:
            outcomes = await self.provider.send(group)
        except TransientError as exc:
            log.warning(
                "provider unavailable",
                provider=self.provider.name,
                count=len(group),
                reason=str(exc),
                retry_after=exc.retry_after,
            )
            await self._retry_later(group, reason=str(exc), retry_after=exc.retry_after)
            return
        async with self.engine.begin() as conn:
            for outcome in outcomes:
                await self._record(conn, outcome)
        log.info(
            "batch sent",
            provider=self.provider.name,
            count=len(group),
            channel=group[0].channel,
            route=group[0].route,
        )

    async def _record(self, conn: AsyncConnection, outcome: SendOutcome) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "provider": self.provider.name,
            "provider_message_id": outcome.provider_message_id,
            "attempts": messages.c.attempts + 1,
            "sent_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        report = StatusReport(outcome.message_id, outcome.status, outcome.error, outcome.raw)
        moved = await apply_status(conn=conn, report=report, source="worker", values=values)
        if not moved:
            # A report overtook the send (already final): keep the provider's id all the same.
            await conn.execute(
                update(messages).where(messages.c.id == outcome.message_id).values(**values)
            )

    async def _retry_later(
        self, group: Sequence[Outbound], *, reason: str, retry_after: float | None
    ) -> None:
        now = utcnow()
        validity = timedelta(seconds=self.settings.message_validity_seconds)
        async with self.engine.begin() as conn:
            for message in group:
                row = (
                    await conn.execute(
                        select(messages.c.attempts, messages.c.created_at).where(
                            messages.c.id == message.message_id
                        )
                    )
                ).one()
                attempts = row.attempts + 1
                error = {"description": reason, "permanent": False, "attempts": attempts}
                if attempts >= self.settings.max_attempts or now - row.created_at >= validity:
                    report = StatusReport(message.message_id, status.EXPIRED, error)
                    await apply_status(
                        conn=conn, report=report, source="worker", values={"attempts": attempts}
                    )
                    continue
                delay = retry_delay(attempts, retry_after=retry_after)
                await conn.execute(
                    update(messages)
                    .where(messages.c.id == message.message_id)
                    .values(
                        attempts=attempts,
                        error=error,
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=now,
                        next_attempt_at=now + timedelta(seconds=delay),
                    )
                )

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
                    or_(
                        messages.c.lease_expires_at.is_(None),
                        and_(messages.c.lease_expires_at < now),
                    ),
                )
                .limit(1000)
            )
            for row in stuck.all():
                report = StatusReport(row.id, status.EXPIRED, STUCK_ERROR)
                await apply_status(conn=conn, report=report, source="housekeeping")
