"""WhatsApp's rule: a business may write only to people who wrote to it, free-form within 24 h."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.tables import inbound_messages, whatsapp_interactions

PLATFORM = "platform"
INBOUND_CHUNK = 200  # interactions upserted per statement
MAX_MESSAGE_ID = 100  # inbound_messages.provider_message_id


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message a customer wrote to a business number."""

    business_number: str
    customer_number: str
    received_at: datetime
    message: Any


async def record_inbound(
    *,
    conn: AsyncConnection,
    owner: str,
    business_number: str,
    customer_number: str,
    received_at: datetime,
    message: Any,
) -> None:
    """Record that a customer wrote to a business number (later messages move the window)."""
    inbound = Inbound(business_number, customer_number, received_at, message)
    await record_inbound_many(conn=conn, owner=owner, interactions=[inbound])


async def record_inbound_many(
    *, conn: AsyncConnection, owner: str, interactions: Sequence[Inbound]
) -> None:
    """Record many inbound messages in a few statements (as `record_inbound` each): the
    latest message per customer and business number, INBOUND_CHUNK rows a statement."""
    latest: dict[tuple[str, str], Inbound] = {}
    for item in interactions:
        key = (item.business_number, item.customer_number)
        if key not in latest or item.received_at > latest[key].received_at:
            latest[key] = item
    rows = [
        {
            "owner": owner,
            "business_number": item.business_number,
            "customer_number": item.customer_number,
            "first_inbound_at": item.received_at,
            "last_inbound_at": item.received_at,
            "last_message": item.message,
        }
        for item in latest.values()
    ]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), INBOUND_CHUNK):
        statement = insert(whatsapp_interactions).values(rows[start : start + INBOUND_CHUNK])
        newer = statement.excluded.last_inbound_at > whatsapp_interactions.c.last_inbound_at
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["owner", "business_number", "customer_number"],
                set_={
                    "last_inbound_at": statement.excluded.last_inbound_at,
                    "last_message": statement.excluded.last_message,
                },
                where=newer,
            )
        )


async def first_seen(
    *, conn: AsyncConnection, owner: str, message_ids: Sequence[str], at: datetime
) -> set[str]:
    """The ids among these never applied for `owner`, marked applied in the caller's
    transaction. On PostgreSQL a concurrent transaction marking the same id waits for this
    one, then finds it marked: a webhook retried into two API processes is applied once."""
    ids = sorted({i for i in message_ids if len(i) <= MAX_MESSAGE_ID})
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    new: set[str] = set()
    for start in range(0, len(ids), 500):
        rows = [
            {"owner": owner, "provider_message_id": message_id, "received_at": at}
            for message_id in ids[start : start + 500]
        ]
        statement = (
            insert(inbound_messages)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(inbound_messages.c.provider_message_id)
        )
        new.update((await conn.execute(statement)).scalars())
    return new | {i for i in message_ids if len(i) > MAX_MESSAGE_ID}
