"""Posting events to webhook endpoints: leased deliveries, one attempt row each, retries.

Deliveries are claimed like messages: a batch of due rows under a lease naming the worker
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several workers never hold the same delivery and
a worker that dies loses nothing: its lease expires and another worker posts the same event
again, with the same `webhook-id`. An attempt starts only while its lease has time left for
the longest attempt (PIGEON_WEBHOOK_TIMEOUT_SECONDS); a claimed delivery that waited longer
is handed back unattempted, so a lease never expires under a live attempt.

Each endpoint has a lane in a worker: the deliveries claimed for it and at most
PIGEON_WEBHOOK_ENDPOINT_CONCURRENCY attempts in flight. A lane is claimed for by how fast its
endpoint answers: about a second of its attempts (at least the concurrency bound, at most
LANE_LIMIT), topped up once half is gone. A fast endpoint is fed in batches of hundreds, one
claim and one recording transaction for each, not a round trip per event; a slow or dead
one holds a handful of deliveries and its own slots, never another endpoint's. Attempts are
recorded in batches (RECORD_BATCH, or every RECORD_EVERY seconds), set-based.

The claims and the recording are plain functions of a `Connection`, each one transaction of
the process's writer (`db.writer`: on SQLite its one thread, beside the accept path's and the
dispatch worker's writes, none holding the lock across a turn of the loop); reads (event
bodies, endpoints, whether anything is due) go through the reader, so an idle worker takes
no write lock.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Row, bindparam, case, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.bulk import insert_rows
from pigeon.db.errors import unavailable, unavailable_reason
from pigeon.db.tables import (
    events,
    inbound_messages,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
)
from pigeon.db.writer import EngineWriter, Writer
from pigeon.dispatch.webhook_http import AttemptError, WebhookClient
from pigeon.events.endpoints import ROTATION_OVERLAP
from pigeon.events.signing import signed_headers
from pigeon.extensions.crypto import decrypt_secret
from pigeon.ids import new_token
from pigeon.netguard import UrlNotAllowed

log = structlog.get_logger("pigeon.deliveries")

RESPONSE_LIMIT = 2000
CLAIM_LIMIT = 1000  # deliveries per claim, all endpoints together
LANE_LIMIT = 1000  # deliveries claimed for one endpoint and not yet attempted, at most
LANE_SECONDS = 1.0  # a lane is claimed for about this long of its endpoint's attempts
RECORD_BATCH = 500
RECORD_EVERY = 0.1
START_MARGIN = 2.0  # seconds of lease left beyond the longest attempt for one to start
HOUSEKEEPING_EVERY = 60.0
MAX_RETRY_AFTER = 24 * 3600.0
d = webhook_deliveries
e = webhook_endpoints


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    event_id: str
    endpoint_id: str
    attempts: int
    event_type: str
    body: bytes
    start_by: float  # loop time after which it is handed back unattempted


@dataclass(slots=True)
class Result:
    """What one attempt came to."""

    claim: Claimed
    at: datetime
    duration_ms: float
    http_status: int | None = None
    response: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


@dataclass(eq=False)
class Lane:
    """One endpoint in this worker: its claimed deliveries and its attempts in flight."""

    endpoint_id: str
    endpoint: Row[Any] | None = None  # as of the latest claim
    queue: deque[Claimed] = field(default_factory=deque)
    running: int = 0
    seconds: float | None = None  # an attempt's duration, averaged
    gone: bool = False  # answered 410: nothing more is attempted
    asked: bool = False  # for more, and not given all it asked for yet

    def want(self, bound: int) -> int:
        """How many deliveries to hold: about LANE_SECONDS of attempts at `bound` at once."""
        if self.seconds is None:
            return bound
        per_second = bound / max(self.seconds, 0.001)
        return int(min(LANE_LIMIT, max(bound, per_second * LANE_SECONDS)))

    def room(self, bound: int) -> int:
        """How many to claim now: none while more than half of what it wants is held."""
        want = self.want(bound)
        held = len(self.queue) + self.running
        return want - held if len(self.queue) * 2 <= want else 0

    def timed(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds is None else 0.8 * self.seconds + 0.2 * seconds


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

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        reader: AsyncEngine | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        # The process's writes (`db.writer`): on SQLite one thread with group commit.
        self.writer = writer or EngineWriter(engine)
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_token(4)}"
        self.per_endpoint = settings.webhook_endpoint_concurrency
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
        self.wake = asyncio.Event()
        self.client = WebhookClient(
            allow_private=settings.allow_private_urls, user_agent="Pigeon-Webhooks/1"
        )
        self.lanes: dict[str, Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[Result] = []
        self._released: list[int] = []  # claimed, not attempted: their leases to drop
        self._first_result = 0.0
        self._secrets: dict[str, str] = {}
        self._last_housekeeping = 0.0
        self._stopping = False
        self._poll = settings.worker_poll_interval
        self._next_claim = 0.0
        self._asked = False

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; attempts under way finish and are recorded."""
        log.info("deliveries started", worker=self.worker_id)
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.run_once()
            except Exception as exc:
                if unavailable(exc) is None:  # a sick database is logged once an incident
                    log.exception("delivery round failed", worker=self.worker_id)
                self._next_claim = asyncio.get_running_loop().time() + self._poll
            await _first_of(stop, self.wake, within=self._pause())
        self._stopping = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * self.settings.webhook_timeout_seconds)
        for lane in self.lanes.values():
            self._released += [claim.delivery_id for claim in lane.queue]
            lane.queue.clear()
        await self.record()
        log.info("deliveries stopped", worker=self.worker_id)

    def _pause(self) -> float:
        """Until the next round: the next claim, or the recording of what is waiting."""
        now = asyncio.get_running_loop().time()
        pause = max(0.0, self._next_claim - now)
        if self._results or self._released:
            pause = min(pause, max(0.0, self._first_result + RECORD_EVERY - now))
        return pause

    async def run_once(self) -> None:
        """Record finished attempts when enough are waiting, then claim and start what is due."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_housekeeping >= HOUSEKEEPING_EVERY:
            self._last_housekeeping = loop.time()
            await self.housekeeping()
        if len(self._results) >= RECORD_BATCH or (
            (self._results or self._released) and loop.time() - self._first_result >= RECORD_EVERY
        ):
            await self.record()
        if self._asked or loop.time() >= self._next_claim:
            # A lane half gone asks for more at once; otherwise claims come every poll.
            self._asked = False
            self._next_claim = loop.time() + self._poll
            await self.start_due()

    async def start_due(self) -> int:
        """Claim for the lanes with room and for endpoints without one; start their attempts.

        How many were claimed."""
        caps = {lane.endpoint_id: lane.room(self.per_endpoint) for lane in self.lanes.values()}
        full = sorted(endpoint for endpoint, room in caps.items() if room <= 0)
        if not await self._anything_due(full):
            return 0
        now = utcnow()
        wanted = {k: v for k, v in caps.items() if v > 0}
        rows = await self.writer.transaction(self._claim, now, wanted, full)
        got = Counter(row[2] for row in rows)
        for endpoint_id, room in wanted.items():
            if got[endpoint_id] >= room:  # it may ask again when half of this is gone
                self.lanes[endpoint_id].asked = False
        if not rows:
            return 0
        start_by = asyncio.get_running_loop().time() + self._startable_for()
        targets, bodies = await self._load(rows)
        for delivery_id, event_id, endpoint_id, attempts in rows:
            endpoint = targets.get(endpoint_id)
            event = bodies.get(event_id)
            if endpoint is None or event is None:
                self._released.append(delivery_id)  # deleted meanwhile
                continue
            lane = self.lanes.get(endpoint_id)
            if lane is None:
                lane = self.lanes[endpoint_id] = Lane(endpoint_id)
            lane.endpoint = endpoint
            lane.gone = False
            claim = Claimed(delivery_id, event_id, endpoint_id, attempts, *event, start_by)
            lane.queue.append(claim)
        for lane in self.lanes.values():
            self._drive(lane)
        self._forget_idle_lanes()
        return len(rows)

    def _startable_for(self) -> float:
        """How long after its claim a delivery may still start an attempt."""
        timeout = self.settings.webhook_timeout_seconds
        return self.lease.total_seconds() - timeout - START_MARGIN

    async def _anything_due(self, full: Sequence[str]) -> bool:
        """Whether a claim would find anything: a read, where the claim takes the write lock."""
        now = utcnow()
        query = select(d.c.id).where(
            d.c.state == "pending",
            d.c.next_attempt_at <= now,
            or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
        )
        if full:
            query = query.where(d.c.endpoint_id.not_in(full))
        async with self.reader.connect() as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    def _claim(
        self, conn: Connection, now: datetime, caps: dict[str, int], full: Sequence[str]
    ) -> list[tuple[int, str, str, int]]:
        """Lease due deliveries: up to `caps[endpoint]` of a lane's endpoint, up to the
        concurrency bound of an endpoint without a lane, none of the `full` ones."""
        free = or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now)
        enabled = select(e.c.id).where(e.c.enabled)
        due = select(d.c.id, d.c.endpoint_id, d.c.next_attempt_at).where(
            d.c.state == "pending", d.c.next_attempt_at <= now, free, d.c.endpoint_id.in_(enabled)
        )
        if full:
            due = due.where(d.c.endpoint_id.not_in(full))
        window = due.order_by(d.c.next_attempt_at).limit(CLAIM_LIMIT * 2).subquery()
        rank = func.row_number().over(
            partition_by=window.c.endpoint_id, order_by=window.c.next_attempt_at
        )
        cap: Any = literal(self.per_endpoint)
        if caps:
            cap = case(caps, value=window.c.endpoint_id, else_=self.per_endpoint)
        ranked = select(window.c.id, rank.label("rank"), cap.label("cap")).subquery()
        picked = select(ranked.c.id).where(ranked.c.rank <= ranked.c.cap)
        locked = (
            select(d.c.id)
            .where(d.c.id.in_(picked), d.c.state == "pending", free)
            .limit(CLAIM_LIMIT)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            update(d)
            .where(d.c.id.in_(locked.scalar_subquery()))
            .values(lease_owner=self.worker_id, lease_expires_at=now + self.lease)
            .returning(d.c.id, d.c.event_id, d.c.endpoint_id, d.c.attempts)
        )
        return [(row.id, row.event_id, row.endpoint_id, row.attempts) for row in rows]

    async def _load(
        self, rows: Sequence[tuple[int, str, str, int]]
    ) -> tuple[dict[str, Row[Any]], dict[str, tuple[str, bytes]]]:
        """The claimed deliveries' endpoints and their events' (type, body)."""
        async with self.reader.connect() as conn:
            endpoint_rows = await conn.execute(
                select(e).where(e.c.id.in_(sorted({row[2] for row in rows})))
            )
            targets = {row.id: row for row in endpoint_rows}
            event_rows = await conn.execute(
                select(events.c.id, events.c.type, events.c.body).where(
                    events.c.id.in_(sorted({row[1] for row in rows}))
                )
            )
            bodies = {row.id: (row.type, row.body.encode()) for row in event_rows}
        return targets, bodies

    def _forget_idle_lanes(self) -> None:
        if len(self.lanes) > 1000:
            for endpoint_id in [k for k, v in self.lanes.items() if not v.queue and not v.running]:
                del self.lanes[endpoint_id]

    def _drive(self, lane: Lane) -> None:
        """Start attempts on the lane, up to the endpoint's bound."""
        while lane.queue and lane.running < self.per_endpoint and not self._stopping:
            lane.running += 1
            task = asyncio.create_task(self._attempts(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempts(self, lane: Lane) -> None:
        """Attempt the lane's deliveries one after another (up to `per_endpoint` of these)."""
        loop = asyncio.get_running_loop()
        try:
            while lane.queue and not self._stopping:
                claim = lane.queue.popleft()
                if lane.gone or lane.endpoint is None or loop.time() > claim.start_by:
                    self._released.append(claim.delivery_id)
                    continue
                if not lane.asked and len(lane.queue) * 2 <= lane.want(self.per_endpoint):
                    lane.asked = True  # half gone: time to claim more (once, till it is given)
                    self._asked = True
                    self.wake.set()
                result = await self._attempt(claim, lane.endpoint)
                lane.timed(result.duration_ms / 1000)
                if result.http_status == 410:
                    lane.gone = True
                self._add(result)
        finally:
            lane.running -= 1
            if not lane.running:
                self.wake.set()

    def _add(self, result: Result) -> None:
        if not self._results:
            self._first_result = asyncio.get_running_loop().time()
        self._results.append(result)
        if len(self._results) >= RECORD_BATCH:
            self.wake.set()

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

    async def _attempt(self, claim: Claimed, endpoint: Row[Any]) -> Result:
        """One signed POST; its outcome, whatever happens (never raises but for cancelling)."""
        at = utcnow()
        started = time.perf_counter()
        result = Result(claim, at, 0.0)
        timeout = self.settings.webhook_timeout_seconds
        try:
            body = claim.body
            secrets = self._signing_secrets(endpoint, at)
            headers = signed_headers(claim.event_id, body, secrets, at=at)
            # The whole attempt, not each read: a receiver that trickles its answer is cut off.
            async with asyncio.timeout(timeout):
                answer = await self.client.post(endpoint.url, body, headers)
            result.http_status = answer.status
            result.response = answer.body.decode("utf-8", errors="replace")[:RESPONSE_LIMIT]
            if answer.status in (429, 503):
                result.retry_after = retry_after_seconds(answer.retry_after)
        except UrlNotAllowed as exc:
            result.error = f"refused: {exc.reason}"
        except TimeoutError:
            result.error = f"timed out after {timeout:g} s"
        except AttemptError as exc:
            result.error = str(exc)[:RESPONSE_LIMIT]
        except Exception as exc:  # never lose the outcome: it is recorded as an error
            log.exception("delivery failed unexpectedly", delivery=claim.delivery_id)
            result.error = f"internal error: {exc}"[:RESPONSE_LIMIT]
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def record(self) -> int:
        """Write the finished attempts (their rows, their deliveries' states, their endpoints)
        and hand back what was claimed and not attempted; one transaction."""
        results, self._results = self._results, []
        released, self._released = self._released, []
        if not results and not released:
            return 0
        try:
            await self.writer.transaction(self._record, results, released, utcnow())
        except Exception as exc:
            if unavailable_reason(exc) is not None:  # recorded once the database is back
                self._results[:0] = results
                self._released[:0] = released
            raise
        return len(results)

    def _record(
        self, conn: Connection, results: list[Result], released: list[int], now: datetime
    ) -> None:
        schedule = self.settings.retry_schedule
        attempts: list[dict[str, Any]] = []
        succeeded: list[int] = []
        retried: list[dict[str, Any]] = []
        ok, failing, gone = set(), set(), set()
        for result in results:
            claim = result.claim
            number = claim.attempts + 1
            next_at = None
            if result.succeeded:
                state = "succeeded"
                ok.add(claim.endpoint_id)
                succeeded.append(claim.delivery_id)
            else:
                delay = None
                if result.http_status == 410:
                    gone.add(claim.endpoint_id)
                else:
                    delay = next_delay(schedule, number, result.retry_after)
                    failing.add(claim.endpoint_id)
                state = "failed" if delay is None else "pending"
                next_at = now + timedelta(seconds=delay) if delay is not None else None
                retried.append(
                    {
                        "b_id": claim.delivery_id,
                        "b_attempts": claim.attempts,
                        "state": state,
                        "next_attempt_at": next_at or now,
                    }
                )
            attempts.append(_attempt_row(result, number, state, next_at, self.worker_id))
        mine = d.c.lease_owner == self.worker_id
        unleased = {"lease_owner": None, "lease_expires_at": None}
        for chunk in _chunks(succeeded):
            conn.execute(
                update(d)
                .where(d.c.id.in_(chunk), mine)
                .values(
                    state="succeeded",
                    attempts=d.c.attempts + 1,
                    next_attempt_at=now,
                    updated_at=now,
                    **unleased,
                )
            )
        if retried:
            conn.execute(
                update(d)
                .where(d.c.id == bindparam("b_id"), d.c.attempts == bindparam("b_attempts"), mine)
                .values(
                    state=bindparam("state"),
                    attempts=d.c.attempts + 1,
                    next_attempt_at=bindparam("next_attempt_at"),
                    updated_at=now,
                    **unleased,
                ),
                retried,
            )
        for chunk in _chunks(released):
            conn.execute(update(d).where(d.c.id.in_(chunk), mine).values(**unleased))
        insert_rows(conn, webhook_attempts, attempts)
        self._endpoint_health(conn, now, ok=ok, failing=failing - ok, gone=gone)

    def _endpoint_health(
        self, conn: Connection, now: datetime, *, ok: set[str], failing: set[str], gone: set[str]
    ) -> None:
        """410 disables at once; failing every attempt for too long disables; success resets."""
        if ok:
            conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(ok)), e.c.failing_since.is_not(None))
                .values(failing_since=None)
            )
        if failing:
            conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(failing)), e.c.failing_since.is_(None))
                .values(failing_since=now)
            )
            limit = timedelta(seconds=self.settings.webhook_disable_after_seconds)
            disabled = conn.execute(
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
            conn.execute(
                update(e)
                .where(e.c.id.in_(sorted(gone)), e.c.enabled)
                .values(
                    enabled=False, disabled_reason="the endpoint answered 410 Gone", updated_at=now
                )
            )
            log.warning("endpoints disabled: 410 Gone", endpoints=sorted(gone))

    async def housekeeping(self) -> None:
        """Drop events past PIGEON_EVENT_RETENTION_SECONDS with their deliveries and attempts,
        and the inbound message ids kept as long."""
        cutoff = utcnow() - timedelta(seconds=self.settings.event_retention_seconds)
        async with self.reader.connect() as conn:
            old_event = select(events.c.id).where(events.c.created_at < cutoff).limit(1)
            old_inbound = select(inbound_messages.c.owner).where(
                inbound_messages.c.received_at < cutoff
            )
            if (await conn.execute(old_event)).first() is None and (
                await conn.execute(old_inbound.limit(1))
            ).first() is None:
                return
        await self.writer.transaction(_forget_before, cutoff)

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        await self.client.aclose()


def _forget_before(conn: Connection, cutoff: datetime) -> None:
    conn.execute(delete(webhook_attempts).where(webhook_attempts.c.at < cutoff))
    conn.execute(delete(d).where(d.c.created_at < cutoff))
    conn.execute(delete(events).where(events.c.created_at < cutoff))
    conn.execute(delete(inbound_messages).where(inbound_messages.c.received_at < cutoff))


def _chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _attempt_row(
    result: Result, number: int, state: str, next_at: datetime | None, worker_id: str
) -> dict[str, Any]:
    return {
        "delivery_id": result.claim.delivery_id,
        "endpoint_id": result.claim.endpoint_id,
        "event_id": result.claim.event_id,
        "event_type": result.claim.event_type,
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


async def _first_of(*flags: asyncio.Event, within: float) -> None:
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
