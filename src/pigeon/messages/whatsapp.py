"""WhatsApp's rule: a business may write only to people who wrote to it, free-form within 24 h."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.tables import whatsapp_interactions

PLATFORM = "platform"


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
    values = {
        "owner": owner,
        "business_number": business_number,
        "customer_number": customer_number,
        "first_inbound_at": received_at,
        "last_inbound_at": received_at,
        "last_message": message,
    }
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(whatsapp_interactions).values(**values)
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
