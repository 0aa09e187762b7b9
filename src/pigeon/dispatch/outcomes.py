"""What the worker writes: each step's statements as one function of a connection.

Each function is one write transaction's work, set-based (a few statements for a whole
batch), run by the process's writer (`db.writer`): on SQLite in one call on the writer thread,
so that no transaction holds the file's lock across a turn of the event loop. Status changes
and their events go through `messages.reports.move_statuses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec
from sqlalchemy import Connection, delete, or_, select

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.bulk import insert_rows, update_rows
from pigeon.db.tables import delivery_attempts, idempotency_keys, messages
from pigeon.dispatch.backoff import retry_delay
from pigeon.messages import status
from pigeon.messages.reports import Moves, StatusReport, move_statuses
from pigeon.providers.base import BODY_LIMIT, Outbound, SendOutcome

STUCK_ERROR = {
    "groupId": 1,
    "groupName": "HANDSET_ERRORS",
    "id": 5003,
    "name": "EC_VALIDITY_PERIOD_EXPIRED",
    "description": "Message was not delivered within its validity period",
    "permanent": False,
}


def _response_text(outcome: SendOutcome) -> str | None:
    """What the provider answered about this message: its own entry of a batch answer."""
    if outcome.raw is not None:
        return msgspec.json.encode(outcome.raw).decode()[:BODY_LIMIT]
    return outcome.call.body if outcome.call else None


def _attempt_outcome(outcome: SendOutcome) -> str:
    if outcome.transient:
        return "transient"
    if outcome.status.is_final and outcome.status.group != status.Group.DELIVERED:
        return "rejected"
    return "accepted"


def record_outcomes(
    conn: Connection,
    *,
    outcomes: Sequence[SendOutcome],
    passed: Sequence[tuple[str, SendOutcome]] = (),
    worker_id: str,
    provider_name: str,
    settings: Settings,
    now: datetime | None = None,
    decided: Moves | None = None,
) -> None:
    """One send's results: an attempt row per message, then new statuses or retries.

    `passed` are earlier providers' transient answers that the route failed over from
    (provider, outcome): attempt rows only. `now` is when the provider answered;
    `decided` the status changes of the taken messages (`sent_moves`), decided before this
    transaction on the rows read then (see `move_statuses`).
    """
    now = now or utcnow()
    answers = [*passed, *((provider_name, outcome) for outcome in outcomes)]
    attempts = [
        {
            "message_id": outcome.message_id,
            "worker_id": worker_id,
            "provider": provider,
            "at": now,
            "duration_ms": outcome.call.duration_ms if outcome.call else None,
            "outcome": _attempt_outcome(outcome),
            "http_status": outcome.call.http_status if outcome.call else None,
            "response": _response_text(outcome),
            "error": outcome.error,
        }
        for provider, outcome in answers
    ]
    taken = [o for o in outcomes if not o.transient]
    if taken:
        reports, sent = sent_moves(taken, provider_name, now)
        move_statuses(
            conn, reports=reports, source="worker", sent=sent, attempted=True, decided=decided
        )
    _retry_later(conn, [o for o in outcomes if o.transient], settings)
    # After the messages are locked and updated: the attempts' foreign-key checks then find
    # rows this transaction already holds, instead of locking each one first.
    insert_rows(conn, delivery_attempts, attempts)


def sent_moves(
    outcomes: Sequence[SendOutcome], provider_name: str, now: datetime
) -> tuple[list[StatusReport], dict[str, dict[str, Any]]]:
    """What the provider's taking these messages changes: en route (whatever pending name it
    gave) or refused, its id for each, their leases cleared."""
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
    return reports, sent


def _retry_later(conn: Connection, outcomes: Sequence[SendOutcome], settings: Settings) -> None:
    """Not taken this time: try again after a backoff, or end EXPIRED when out of tries."""
    if not outcomes:
        return
    now = utcnow()
    rows = conn.execute(
        select(messages.c.id, messages.c.attempts, messages.c.created_at).where(
            messages.c.id.in_([o.message_id for o in outcomes])
        )
    )
    known = {row.id: row for row in rows}
    validity = timedelta(seconds=settings.message_validity_seconds)
    expired: list[StatusReport] = []
    counted: dict[str, dict[str, Any]] = {}
    retries: list[dict[str, Any]] = []
    for outcome in outcomes:
        row = known.get(outcome.message_id)
        if row is None:
            continue
        attempts = row.attempts + 1
        error = {**(outcome.error or {}), "attempts": attempts}
        if attempts >= settings.max_attempts or now - row.created_at >= validity:
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
        move_statuses(conn, reports=expired, source="worker", sent=counted)
    update_rows(conn, messages, retries)


def move_on(
    conn: Connection, *, already_sent: Sequence[tuple[Outbound, str]], worker_id: str
) -> None:
    """Messages the provider accepted before (their id is stored): never send them again."""
    now = utcnow()
    skipped = [
        {
            "message_id": message.message_id,
            "worker_id": worker_id,
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
    move_statuses(conn, reports=reports, source="worker", sent=released)
    insert_rows(conn, delivery_attempts, skipped)


def apply_polled_reports(
    conn: Connection,
    provider_name: str,
    reports: list[StatusReport],
    decided: Moves | None = None,
) -> int:
    """Apply the reports a provider without webhooks had (the sandbox): changes made.

    `decided`: their changes, decided on the rows read with the reports (see `move_statuses`).
    """
    moved = move_statuses(conn, reports=reports, source="report", decided=decided)
    stale = len(reports) - moved
    metrics.on_commit(conn, partial(metrics.count_reports, provider_name, moved, 0, stale))
    return moved


def housekeeping(conn: Connection, *, settings: Settings) -> None:
    """Drop expired idempotency keys; end messages pending past their validity as EXPIRED."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.message_validity_seconds)
    conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at < now))
    stuck = conn.execute(
        select(messages.c.id)
        .where(
            messages.c.group_id == status.Group.PENDING,
            messages.c.created_at < cutoff,
            or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
        )
        .limit(1000)
    )
    reports = [StatusReport(row.id, status.EXPIRED, STUCK_ERROR) for row in stuck]
    move_statuses(conn, reports=reports, source="housekeeping")
