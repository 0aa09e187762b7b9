"""Inbound webhooks: authenticate the URL's token, then apply what the provider tells us."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import accounts, messages, users
from pigeon.errors import Unauthorized
from pigeon.events.catalogue import WHATSAPP_RECEIVED
from pigeon.events.service import NewEvent, record_events
from pigeon.ids import is_object_id
from pigeon.messages import whatsapp
from pigeon.messages.reports import (
    Moves,
    StatusReport,
    decide_moves,
    message_states,
    move_statuses,
)
from pigeon.messages.status import Status, status_for
from pigeon.providers.base import normalised_error
from pigeon.webhooks.schemas import DeliveryReports, InboundMessages, WebhookAnswer
from pigeon.webhooks.tokens import is_valid_token

log = structlog.get_logger("pigeon.webhooks")
INFOBIP = "infobip"  # the provider whose report format these webhooks speak
REPORT_CHUNK = 250  # reports looked up and applied per statement batch
UNKNOWN_SAMPLE = 5  # unknown ids named in the summary line


async def authenticate(
    *, conn: AsyncConnection, settings: Settings, owner: str, token: str
) -> None:
    """Check the URL's token for `owner` ("platform" or an account id) in constant time."""
    if owner != whatsapp.PLATFORM:
        # An account id; other text (a NUL too) never reaches the database.
        query = select(accounts.c.id).where(accounts.c.id == owner)
        if not is_object_id(owner) or (await conn.execute(query)).first() is None:
            raise Unauthorized("unknown webhook URL", code="invalid_webhook_token")
    if not await is_valid_token(conn=conn, settings=settings, owner=owner, token=token):
        raise Unauthorized("unknown webhook URL", code="invalid_webhook_token")


def _digits(number: str) -> str:
    return re.sub(r"\D", "", number)


def parse_received_at(value: str | None) -> datetime:
    """Infobip's timestamps (`2026-11-28T08:00:00.000+0000`); missing or future ones mean now."""
    now = utcnow()
    if not value:
        return now
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
        except ValueError:
            return now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(moment, now)


async def _writers(
    *, conn: AsyncConnection, owner: str, numbers: set[str]
) -> dict[str, list[tuple[str, str | None]]]:
    """Who gets told a number wrote: (account, user id) for each customer number.

    A tenant's own number tells that tenant; the platform's number tells each tenant with a
    User of that WhatsApp number (and no one when the writer is no tenant's User).
    """
    if owner != whatsapp.PLATFORM:
        return {number: [(owner, None)] for number in numbers}
    found: dict[str, list[tuple[str, str | None]]] = {}
    rows = await conn.execute(
        select(users.c.channel_whatsapp, users.c.account_id, users.c.id)
        .where(users.c.channel_whatsapp.in_(sorted(numbers)))
        .order_by(users.c.id)
    )
    for row in rows:
        found.setdefault(row.channel_whatsapp, []).append((row.account_id, row.id))
    return found


def _received_data(
    item: Any, original: dict[str, Any], user_id: str | None, received_at: datetime
) -> dict[str, Any]:
    return {
        "messageId": item.messageId,
        "channel": "whatsapp",
        "from": _digits(item.from_),
        "to": _digits(item.to),
        "recipient": {"type": "user", "id": user_id} if user_id else None,
        "receivedAt": received_at,
        "message": original.get("message"),
        "contact": original.get("contact"),
    }


async def record_inbound(
    *, conn: AsyncConnection, owner: str, payload: InboundMessages, raw: list[dict[str, Any]]
) -> WebhookAnswer:
    """Record each inbound WhatsApp message as an interaction opening the 24-hour window (a
    few rows per statement), and tell the tenant it concerns (`whatsapp.message.received`) in
    the same transaction."""
    now = utcnow()
    writers = await _writers(
        conn=conn, owner=owner, numbers={_digits(item.from_) for item in payload.results}
    )
    received: list[NewEvent] = []
    interactions: list[whatsapp.Inbound] = []
    entries = await _not_applied(conn, owner, list(zip(payload.results, raw, strict=True)), now)
    for item, original in entries:
        received_at = parse_received_at(item.receivedAt)
        interactions.append(
            whatsapp.Inbound(
                business_number=_digits(item.to),
                customer_number=_digits(item.from_),
                received_at=received_at,
                message=original,
            )
        )
        for account_id, user_id in writers.get(_digits(item.from_), ()):
            data = _received_data(item, original, user_id, received_at)
            received.append(NewEvent(account_id, WHATSAPP_RECEIVED, item.messageId, data, now))
    await whatsapp.record_inbound_many(conn=conn, owner=owner, interactions=interactions)
    await record_events(conn=conn, new_events=received)
    repeated = len(payload.results) - len(entries)
    log.info("inbound recorded", owner=owner, count=len(entries), repeated=repeated)
    return WebhookAnswer(received=len(payload.results), applied=len(entries))


async def _not_applied(
    conn: AsyncConnection, owner: str, entries: list[tuple[Any, dict[str, Any]]], now: datetime
) -> list[tuple[Any, dict[str, Any]]]:
    """The entries not applied before: Infobip posts a webhook again when it saw no 2xx in
    time, with the same message ids (an entry without one cannot be told apart: it is kept)."""
    ids = [item.messageId for item, _ in entries if item.messageId]
    new = await whatsapp.first_seen(conn=conn, owner=owner, message_ids=ids, at=now)
    kept = []
    for item, original in entries:
        if item.messageId:
            if item.messageId not in new:
                continue
            new.discard(item.messageId)  # and once within this post
        kept.append((item, original))
    return kept


def _reported_status(report: Any) -> Status:
    known = status_for(report.status.id, report.status.groupId)
    if report.status.name and report.status.groupName:
        return Status(
            report.status.groupId,
            report.status.groupName,
            report.status.id,
            report.status.name,
            report.status.description or known.description,
        )
    return known


def _report_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A report's error in the one shape, Infobip's own object kept as its raw; None for 0."""
    if not error or error.get("id") in (0, None):
        return None
    return normalised_error("infobip", {**error, "raw": dict(error)})


def report_lookup(reported: set[str], dialect: str, *, by_provider: bool = False) -> Select[Any]:
    """The messages some reported ids name, with the state their reports are decided on: by
    our id, or (`by_provider`) by the provider's message id.

    Two lookups, the second only for the ids the first did not find (Pigeon gives Infobip its
    own ids, so there is rarely a second). As one query (`id IN (...) OR provider_message_id
    IN (...)`), PostgreSQL chose a sequential scan of every message for each chunk of reports:
    on a table not yet analyzed it has no estimate for the provider's ids but "all of them",
    and with statistics its default costs still preferred the scan up to a few hundred
    thousand rows (16 ms for 250 reports at 40,000 rows, against 1 ms through the index).
    The owner is checked on the rows (`_owned_by`), not in the WHERE clause: given a tenant's
    account_id there, SQLite (which keeps no statistics) walks that tenant's whole index of
    messages instead of looking the few reported ids up.
    """
    by = messages.c.provider_message_id if by_provider else messages.c.id
    states = message_states(sorted(reported), dialect, by=by)
    return states.add_columns(messages.c.provider_message_id, messages.c.route)


def _owned_by(row: Any, owner: str) -> bool:
    """Whether a message is one the report's sender may report on: the platform's own sends,
    or the tenant's sends through its Infobip account."""
    if owner == whatsapp.PLATFORM:
        return bool(row.route == "platform")
    return bool(row.account_id == owner and row.route == "tenant")


@dataclass(slots=True)
class ReportChunk:
    """REPORT_CHUNK reports resolved to our messages, and their changes as decided."""

    reports: list[StatusReport]
    unknown: list[str]
    decided: Moves | None = None


def report_chunks(
    payload: DeliveryReports, raw: list[dict[str, Any]]
) -> list[list[tuple[Any, dict[str, Any]]]]:
    """A POST's reports (each with its original JSON), REPORT_CHUNK at a time: each chunk is
    read, decided and written on its own (`read_reports`, `apply_reports`)."""
    entries = list(zip(payload.results, raw, strict=True))
    return [entries[start : start + REPORT_CHUNK] for start in range(0, len(entries), REPORT_CHUNK)]


def read_reports(
    conn: Connection, *, owner: str, entries: list[tuple[Any, dict[str, Any]]]
) -> ReportChunk:
    """Resolve a chunk of reports to our messages and decide their changes, on a read
    connection before the write transaction (`apply_reports`, which writes them if the rows
    are still so)."""
    chunk, rows = _resolve(conn, owner, entries)
    chunk.decided = decide_moves(rows, reports=chunk.reports, source="report")
    return chunk


def apply_reports(conn: Connection, chunk: ReportChunk) -> int:
    """Apply a chunk of delivery reports idempotently, in the caller's transaction: the
    changes made (a report that moves nothing forward is stale, not an error).

    A POST's chunks are separate transactions: a large POST holds SQLite's lock (and, in the
    API process, the accepts queued behind it on the writer) one chunk at a time. That is
    safe because applying is idempotent: when a later chunk fails, Infobip posts the whole
    batch again, and the chunks already written are stale then.
    """
    moved = move_statuses(conn, reports=chunk.reports, source="report", decided=chunk.decided)
    stale, unknown = len(chunk.reports) - moved, len(chunk.unknown)
    metrics.on_commit(conn, lambda: metrics.count_reports(INFOBIP, moved, unknown, stale))
    return moved


def reports_answer(*, owner: str, received: int, applied: int, unknown: list[str]) -> WebhookAnswer:
    """A POST's answer, and its one log line (ids we do not know are counted and logged once,
    not errors)."""
    summary = {"owner": owner, "received": received, "applied": applied}
    if unknown:
        log.warning(
            "delivery reports for unknown messages",
            **summary,
            unknown=len(unknown),
            unknown_ids=unknown[:UNKNOWN_SAMPLE],
        )
    else:
        log.info("delivery reports applied", **summary)
    return WebhookAnswer(received=received, applied=applied, unknown=len(unknown))


def _resolve(
    conn: Connection, owner: str, entries: list[tuple[Any, dict[str, Any]]]
) -> tuple[ReportChunk, list[Any]]:
    """Some reports as our messages' reports, and the ids that name no message of ours; with
    the rows of those messages as they are now."""
    reported = {item.messageId for item, _ in entries}
    dialect = conn.dialect.name
    ours: dict[str, str] = {}
    rows: dict[str, Any] = {}
    for row in conn.execute(report_lookup(reported, dialect)):
        if _owned_by(row, owner):
            ours[row.id] = row.id
            rows[row.id] = row
    rest = reported - ours.keys()
    if rest:
        for row in conn.execute(report_lookup(rest, dialect, by_provider=True)):
            if _owned_by(row, owner):
                ours.setdefault(row.provider_message_id, row.id)
                rows.setdefault(row.id, row)
    reports, unknown = [], []
    for item, original in entries:
        message_id = ours.get(item.messageId)
        if message_id is None:
            unknown.append(item.messageId)
            continue
        error = _report_error(item.error)
        reports.append(StatusReport(message_id, _reported_status(item), error, original))
    return ReportChunk(reports, unknown), [rows[message_id] for message_id in sorted(rows)]
