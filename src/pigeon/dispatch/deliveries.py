"""Posting events to webhook endpoints: leased deliveries, one attempt row each, retries.

Deliveries are claimed like messages: a batch of due rows under a lease naming the worker
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several workers never hold the same delivery and
a worker that dies loses nothing: its lease expires and another worker posts the same event
again, with the same `webhook-id`. The lease outlasts the longest a claimed delivery can take
here (waiting for its endpoint's slot, then the request), so it never expires under a live
attempt.

Each endpoint has a bounded number of requests in flight in a worker, and a claim takes at
most that many of an endpoint's deliveries, none of an endpoint already at its bound: a slow
or dead endpoint holds its own slots, never another endpoint's. Attempts are recorded as they
finish, in batches, by the loop that claims.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from sqlalchemy import Row, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.bulk import insert_rows
from pigeon.db.errors import unavailable, unavailable_reason
from pigeon.db.tables import events, webhook_attempts, webhook_deliveries, webhook_endpoints
from pigeon.events.endpoints import ROTATION_OVERLAP
from pigeon.events.signing import signed_headers
from pigeon.extensions.crypto import decrypt_secret
from pigeon.ids import new_token
from pigeon.netguard import UrlNotAllowed, guarded_transport

log = structlog.get_logger("pigeon.deliveries")

RESPONSE_LIMIT = 2000
CLAIM_LIMIT = 200
HOUSEKEEPING_EVERY = 60.0
MAX_RETRY_AFTER = 24 * 3600.0
_BODY_READ_LIMIT = 64 * 1024
d = webhook_deliveries


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    event_id: str
    endpoint_id: str
    attempts: int


@dataclass(slots=True)
class Result:
    """What one attempt came to."""

    claim: Claimed
    event_type: str
    at: datetime
    duration_ms: float
    http_status: int | None = None
    response: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, min(float(value), MAX_RETRY_AFTER))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min((moment - utcnow()).total_seconds(), MAX_RETRY_AFTER))


def next_delay(schedule: Sequence[float], attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the attempt after `attempt` (1-based), or None when none is left.

    The schedule's entry with up to 10% jitter, so that an endpoint's failed deliveries do not
    all come back in the same second; never sooner than the endpoint's Retry-After.
    """
    if attempt >= len(schedule):
        return None
    delay = schedule[attempt] * random.uniform(1.0, 1.1)
    return max(delay, retry_after or 0.0)


class DeliveryWorker:
    """Claims due deliveries, posts them signed, and records each attempt."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_token(4)}"
        self.per_endpoint = settings.webhook_endpoint_concurrency
        # Waiting for the endpoint's slot (one request at most), then the request itself.
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
        self.wake = asyncio.Event()
        self.client = httpx.AsyncClient(
            transport=guarded_transport(
                allow_private=settings.allow_private_urls,
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                field="url",
            ),
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            headers={"user-agent": "Pigeon-Webhooks/1"},
        )
        self._in_flight: dict[str, int] = defaultdict(int)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[Result] = []
        self._secrets: dict[str, str] = {}
        self._last_housekeeping = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; attempts under way finish and are recorded."""
        while not stop.is_set():
            busy = False
            try:
                busy = await self.run_once()
            except Exception as exc:
                if unavailable(exc) is None:  # a sick database is logged once an incident
                    log.exception("delivery round failed", worker=self.worker_id)
            if not busy:
                self.wake.clear()
                await _first_of(stop, self.wake, within=self.settings.worker_poll_interval)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * self.settings.webhook_timeout_seconds)
        await self.record()

    async def run_once(self) -> bool:
        """Record finished attempts, then claim and start what is due; True if it did work."""
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = loop_time
            await self.housekeeping()
        recorded = await self.record()
        started = await self.start_due()
        return recorded > 0 or started > 0

    async def start_due(self) -> int:
        """Claim due deliveries of endpoints with free slots and start posting them."""
        busy = sorted(e for e, n in self._in_flight.items() if n >= self.per_endpoint)
        claimed = await self.claim(busy)
        if not claimed:
            return 0
        targets, bodies = await self._load(claimed)
        for claim in claimed:
            endpoint = targets.get(claim.endpoint_id)
            body = bodies.get(claim.event_id)
            if endpoint is None or body is None:
                continue  # deleted meanwhile; the lease lapses and nothing is due
            self._in_flight[claim.endpoint_id] += 1
            task = asyncio.create_task(self._deliver(claim, endpoint, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def claim(self, busy: Sequence[str]) -> list[Claimed]:
        """Lease up to CLAIM_LIMIT due deliveries, at most `per_endpoint` of each endpoint."""
        now = utcnow()
        free = or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now)
        enabled = select(webhook_endpoints.c.id).where(webhook_endpoints.c.enabled)
        due = select(d.c.id, d.c.endpoint_id, d.c.next_attempt_at).where(
            d.c.state == "pending", d.c.next_attempt_at <= now, free, d.c.endpoint_id.in_(enabled)
        )
        if busy:
            due = due.where(d.c.endpoint_id.not_in(busy))
        window = due.order_by(d.c.next_attempt_at).limit(CLAIM_LIMIT * 4).subquery()
        rank = func.row_number().over(
            partition_by=window.c.endpoint_id, order_by=window.c.next_attempt_at
        )
        ranked = select(window.c.id, rank.label("rank")).subquery()
        picked = select(ranked.c.id).where(ranked.c.rank <= self.per_endpoint)
        locked = (
            select(d.c.id)
            .where(d.c.id.in_(picked), d.c.state == "pending", free)
            .limit(CLAIM_LIMIT)
            .with_for_update(skip_locked=True)
        )
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                update(d)
                .where(d.c.id.in_(locked.scalar_subquery()))
                .values(lease_owner=self.worker_id, lease_expires_at=now + self.lease)
                .returning(d.c.id, d.c.event_id, d.c.endpoint_id, d.c.attempts)
            )
            return [Claimed(*row) for row in rows]

    async def _load(
        self, claimed: Sequence[Claimed]
    ) -> tuple[dict[str, Row[Any]], dict[str, tuple[str, str]]]:
        """The claimed deliveries' endpoints and their events' (type, body)."""
        async with self.engine.connect() as conn:
            endpoint_rows = await conn.execute(
                select(webhook_endpoints).where(
                    webhook_endpoints.c.id.in_(sorted({c.endpoint_id for c in claimed}))
                )
            )
            targets = {row.id: row for row in endpoint_rows}
            event_rows = await conn.execute(
                select(events.c.id, events.c.type, events.c.body).where(
                    events.c.id.in_(sorted({c.event_id for c in claimed}))
                )
            )
            bodies = {row.id: (row.type, row.body) for row in event_rows}
        return targets, bodies

    def _signing_secrets(self, endpoint: Row[Any], now: datetime) -> list[str]:
        stored = [endpoint.secret]
        if (
            endpoint.previous_secret is not None
            and endpoint.rotated_at is not None
            and now < endpoint.rotated_at + ROTATION_OVERLAP
        ):
            stored.append(endpoint.previous_secret)
        clear = []
        for secret in stored:
            if secret not in self._secrets:
                self._secrets[secret] = decrypt_secret(secret, self.settings)
            clear.append(self._secrets[secret])
        return clear

    def _slot(self, endpoint_id: str) -> asyncio.Semaphore:
        slot = self._slots.get(endpoint_id)
        if slot is None:
            slot = self._slots[endpoint_id] = asyncio.Semaphore(self.per_endpoint)
        return slot

    async def _deliver(self, claim: Claimed, endpoint: Row[Any], event: tuple[str, str]) -> None:
        event_type, body = event
        try:
            async with self._slot(claim.endpoint_id):
                result = await self._post(claim, endpoint, event_type, body)
        except Exception as exc:  # never lose the outcome: it is recorded as an error
            log.exception("delivery failed unexpectedly", delivery=claim.delivery_id)
            result = Result(claim, event_type, utcnow(), 0.0, error=f"internal error: {exc}")
        finally:
            self._in_flight[claim.endpoint_id] -= 1
            if self._in_flight[claim.endpoint_id] <= 0:
                del self._in_flight[claim.endpoint_id]
        self._results.append(result)
        self.wake.set()

    async def _post(self, claim: Claimed, endpoint: Row[Any], event_type: str, body: str) -> Result:
        at = utcnow()
        headers = signed_headers(claim.event_id, body, self._signing_secrets(endpoint, at), at=at)
        started = time.perf_counter()
        result = Result(claim, event_type, at, 0.0)
        try:
            # The whole attempt, not each read: a receiver that trickles its answer is cut off.
            async with (
                asyncio.timeout(self.settings.webhook_timeout_seconds),
                self.client.stream(
                    "POST", endpoint.url, content=body.encode(), headers=headers
                ) as response,
            ):
                result.http_status = response.status_code
                result.response = await _first_text(response)
                if response.status_code in (429, 503):
                    result.retry_after = retry_after_seconds(response.headers.get("retry-after"))
        except UrlNotAllowed as exc:
            result.error = f"refused: {exc.reason}"
        except (httpx.TimeoutException, TimeoutError):
            result.error = f"timed out after {self.settings.webhook_timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:RESPONSE_LIMIT]
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def record(self) -> int:
        """Write the finished attempts: their rows, their deliveries' states, their endpoints."""
        results, self._results = self._results, []
        if not results:
            return 0
        now = utcnow()
        schedule = self.settings.retry_schedule
        attempts, states = [], []
        ok, failing, gone = set(), set(), set()
        for result in results:
            number = result.claim.attempts + 1
            delay = None
            if result.succeeded:
                state = "succeeded"
                ok.add(result.claim.endpoint_id)
            elif result.http_status == 410:
                state = "failed"
                gone.add(result.claim.endpoint_id)
            else:
                delay = next_delay(schedule, number, result.retry_after)
                state = "failed" if delay is None else "pending"
                failing.add(result.claim.endpoint_id)
            next_at = now + timedelta(seconds=delay) if delay is not None else None
            attempts.append(_attempt_row(result, number, state, next_at, self.worker_id))
            states.append(
                {
                    "b_id": result.claim.delivery_id,
                    "b_attempts": result.claim.attempts,
                    "state": state,
                    "attempts": number,
                    "next_attempt_at": next_at or now,
                    "updated_at": now,
                }
            )
        try:
            await self._write_results(now, states, attempts, ok=ok, failing=failing, gone=gone)
        except Exception as exc:
            if unavailable_reason(exc) is not None:
                self._results[:0] = results  # recorded once the database is back
            raise
        return len(results)

    async def _write_results(
        self,
        now: datetime,
        states: list[dict[str, Any]],
        attempts: list[dict[str, Any]],
        *,
        ok: set[str],
        failing: set[str],
        gone: set[str],
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(d)
                .where(
                    d.c.id == bindparam("b_id"),
                    d.c.attempts == bindparam("b_attempts"),
                    d.c.lease_owner == self.worker_id,
                )
                .values(
                    state=bindparam("state"),
                    attempts=bindparam("attempts"),
                    next_attempt_at=bindparam("next_attempt_at"),
                    updated_at=bindparam("updated_at"),
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                states,
            )
            await conn.run_sync(insert_rows, webhook_attempts, attempts)
            await self._endpoint_health(conn, now, ok=ok, failing=failing - ok, gone=gone)

    async def _endpoint_health(
        self, conn: Any, now: datetime, *, ok: set[str], failing: set[str], gone: set[str]
    ) -> None:
        """410 disables at once; failing every attempt for too long disables; success resets."""
        e = webhook_endpoints
        if ok:
            await conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(ok)), e.c.failing_since.is_not(None))
                .values(failing_since=None)
            )
        if failing:
            await conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(failing)), e.c.failing_since.is_(None))
                .values(failing_since=now)
            )
            limit = timedelta(seconds=self.settings.webhook_disable_after_seconds)
            disabled = await conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(failing)), e.c.enabled, e.c.failing_since <= now - limit)
                .values(
                    enabled=False,
                    disabled_reason=f"every attempt failed for {limit.total_seconds():g} s",
                    updated_at=now,
                )
                .returning(e.c.id)
            )
            for row in disabled:
                log.warning("endpoint disabled: failing too long", endpoint=row.id)
        if gone:
            await conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(gone)), e.c.enabled)
                .values(
                    enabled=False, disabled_reason="the endpoint answered 410 Gone", updated_at=now
                )
            )
            log.warning("endpoints disabled: 410 Gone", endpoints=sorted(gone))

    async def housekeeping(self) -> None:
        """Drop events past PIGEON_EVENT_RETENTION_SECONDS with their deliveries and attempts."""
        cutoff = utcnow() - timedelta(seconds=self.settings.event_retention_seconds)
        async with self.engine.begin() as conn:
            await conn.execute(delete(webhook_attempts).where(webhook_attempts.c.at < cutoff))
            await conn.execute(delete(d).where(d.c.created_at < cutoff))
            await conn.execute(delete(events).where(events.c.created_at < cutoff))

    async def aclose(self) -> None:
        """Release the HTTP client."""
        await self.client.aclose()


def _attempt_row(
    result: Result, number: int, state: str, next_at: datetime | None, worker_id: str
) -> dict[str, Any]:
    return {
        "delivery_id": result.claim.delivery_id,
        "endpoint_id": result.claim.endpoint_id,
        "event_id": result.claim.event_id,
        "event_type": result.event_type,
        "attempt": number,
        "worker_id": worker_id,
        "at": result.at,
        "http_status": result.http_status,
        "error": result.error,
        "duration_ms": result.duration_ms,
        "response": result.response,
        "state": state,
        "next_attempt_at": next_at,
    }


async def _first_text(response: httpx.Response) -> str:
    """The first RESPONSE_LIMIT characters of the answer, reading no more than needed."""
    read = b""
    async for chunk in response.aiter_bytes():
        read += chunk
        if len(read) >= _BODY_READ_LIMIT:
            break
    return read.decode("utf-8", errors="replace")[:RESPONSE_LIMIT]


async def _first_of(*flags: asyncio.Event, within: float) -> None:
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
