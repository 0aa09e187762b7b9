"""Reading a tenant's events back: a tenant that missed deliveries catches up here."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.tables import events
from pigeon.errors import NotFound, field_error
from pigeon.events.catalogue import EVENT_TYPES
from pigeon.events.schemas import Event, EventList
from pigeon.pagination import Cursors

_decoder = msgspec.json.Decoder(Event)


async def get_event(*, conn: AsyncConnection, account_id: str, event_id: str) -> Event:
    """One of the tenant's events."""
    query = select(events.c.body).where(events.c.account_id == account_id, events.c.id == event_id)
    body = (await conn.execute(query)).scalar_one_or_none()
    if body is None:
        raise NotFound(f"event {event_id} not found", code="event_not_found")
    return _decoder.decode(body)


async def list_events(
    *,
    conn: AsyncConnection,
    account_id: str,
    limit: int,
    cursor: str | None,
    cursors: Cursors,
    event_type: str | None = None,
    after: datetime | None = None,
) -> EventList:
    """A page of the tenant's events, newest first; `after` keeps those created after it."""
    query = select(events.c.seq, events.c.body).where(events.c.account_id == account_id)
    if event_type is not None:
        if event_type not in EVENT_TYPES:
            raise field_error("type", f"must be one of {', '.join(EVENT_TYPES)}")
        query = query.where(events.c.type == event_type)
    if after is not None:
        query = query.where(
            events.c.created_at > (after if after.tzinfo else after.replace(tzinfo=UTC))
        )
    scope = f"events:{account_id}"
    before = cursors.decode(cursor, scope=scope)
    if before is not None:
        if not before.isdigit():  # signed by this API, so never: a seq is all it issues
            raise field_error("cursor", "not a cursor this API issued", code="invalid_cursor")
        query = query.where(events.c.seq < int(before))
    rows = (await conn.execute(query.order_by(events.c.seq.desc()).limit(limit + 1))).all()
    page, next_cursor = cursors.page(rows, limit, lambda row: str(row.seq), scope=scope)
    return EventList(items=[_decoder.decode(row.body) for row in page], next_cursor=next_cursor)
