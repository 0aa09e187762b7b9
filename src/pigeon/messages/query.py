"""Reading messages back: one with its full history, or a filtered, paginated list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.tables import delivery_attempts, message_events, messages
from pigeon.errors import NotFound, field_error
from pigeon.ids import is_object_id
from pigeon.messages.schemas import (
    CHANNELS,
    DeliveryAttempt,
    Message,
    MessageList,
    MessageSummary,
    Recipient,
    StatusEvent,
)
from pigeon.messages.status import group_ids_for, status_for
from pigeon.pagination import Cursors
from pigeon.validation import normalize_email, normalize_phone


def _as_utc(moment: datetime | None) -> datetime | None:
    """Times without an offset are taken as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _summary_fields(row: Row[Any]) -> dict[str, Any]:
    return {
        "messageId": row.id,
        "channel": row.channel,
        "recipient": Recipient(type=row.recipient_type, id=row.recipient_id),
        "destination": row.destination,
        "sender": row.sender,
        "status": status_for(row.status_id, row.group_id),
        "error": row.error,
        "attempts": row.attempts,
        "provider": row.provider,
        "providerMessageId": row.provider_message_id,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
        "sentAt": row.sent_at,
        "doneAt": row.done_at,
    }


def recipient_filter(value: str) -> str:
    """`?recipient=` as stored: an id as it is, a destination normalised like a send's.

    A `+` in a query string arrives as a space (form encoding), so blanks are dropped first.
    """
    text = value.strip()
    if is_object_id(text):
        return text
    if "@" in text:
        return normalize_email(text, field="recipient")
    return normalize_phone(text, field="recipient")


async def get_message(*, conn: AsyncConnection, account_id: str, message_id: str) -> Message:
    """One of the tenant's messages with its whole status history, as one snapshot shows it.

    `conn` is a connection not yet in a transaction. On PostgreSQL its transaction is
    REPEATABLE READ: under READ COMMITTED each of the three reads had a snapshot of its own,
    and a status change committed between them showed its attempt without its status.
    (SQLite's read transaction is one snapshot already.)
    """
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        await conn.execution_options(isolation_level="REPEATABLE READ")
    row = None
    if message_id.isdigit():
        query = select(messages).where(
            messages.c.account_id == account_id, messages.c.id == message_id
        )
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"message {message_id} not found", code="message_not_found")
    events = await conn.execute(
        select(message_events)
        .where(message_events.c.message_id == message_id)
        .order_by(message_events.c.id)
    )
    history = [
        StatusEvent(status=status_for(e.status_id), at=e.at, source=e.source, detail=e.detail)
        for e in events
    ]
    tries = await conn.execute(
        select(delivery_attempts)
        .where(delivery_attempts.c.message_id == message_id)
        .order_by(delivery_attempts.c.id)
    )
    # A tenant's own Infobip account may point anywhere: its raw answers stay in the log.
    answers_shown = row.route == "platform"
    attempts = [
        DeliveryAttempt(
            at=a.at,
            provider=a.provider,
            outcome=a.outcome,
            httpStatus=a.http_status,
            durationMs=a.duration_ms,
            error=a.error,
            response=a.response if answers_shown else None,
        )
        for a in tries
    ]
    return Message(
        **_summary_fields(row), content=row.content, history=history, deliveryAttempts=attempts
    )


async def list_messages(
    *,
    conn: AsyncConnection,
    account_id: str,
    limit: int,
    cursor: str | None,
    cursors: Cursors,
    channel: str | None = None,
    status: str | None = None,
    recipient: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> MessageList:
    """A page of the tenant's messages, newest first, filtered."""
    query = select(messages).where(messages.c.account_id == account_id)
    if channel is not None:
        if channel not in CHANNELS:
            raise field_error("channel", f"must be one of {', '.join(CHANNELS)}")
        query = query.where(messages.c.channel == channel)
    if status is not None:
        resolved = group_ids_for(status)
        if resolved is None:
            raise field_error("status", f"{status!r} is neither a status group nor a status name")
        groups, ids = resolved
        query = query.where(
            messages.c.group_id.in_(groups) if groups else messages.c.status_id.in_(ids)
        )
    if recipient is not None:
        wanted = recipient_filter(recipient)
        query = query.where(
            or_(messages.c.recipient_id == wanted, messages.c.destination == wanted)
        )
    since, until = _as_utc(since), _as_utc(until)
    if since is not None:
        query = query.where(messages.c.created_at >= since)
    if until is not None:
        query = query.where(messages.c.created_at < until)
    scope = f"messages:{account_id}"
    before = cursors.decode(cursor, scope=scope)
    if before is not None:
        query = query.where(messages.c.id < before)
    rows = (await conn.execute(query.order_by(messages.c.id.desc()).limit(limit + 1))).all()
    page, cursor = cursors.page(rows, limit, lambda row: str(row.id), scope=scope)
    return MessageList(
        items=[MessageSummary(**_summary_fields(r)) for r in page], next_cursor=cursor
    )
