"""WhatsApp's rule: a business may write only to people who wrote to it, free-form within 24 h."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.tables import whatsapp_interactions
from pigeon.errors import Unprocessable

PLATFORM = "platform"


async def check_window(
    *,
    conn: AsyncConnection,
    owner: str,
    business_number: str,
    customer_number: str,
    window: timedelta,
    now: datetime,
    template: bool = False,
) -> None:
    """Refuse a WhatsApp message to someone who never wrote, or free-form text out of window."""
    query = select(whatsapp_interactions.c.last_inbound_at).where(
        whatsapp_interactions.c.owner == owner,
        whatsapp_interactions.c.business_number == business_number,
        whatsapp_interactions.c.customer_number == customer_number,
    )
    last = (await conn.execute(query)).scalar_one_or_none()
    if last is None:
        raise Unprocessable(
            f"{customer_number} has never written to WhatsApp number {business_number}: "
            "WhatsApp lets a business message only people who have contacted it first",
            code="whatsapp_no_interaction",
        )
    if not template and now - last > window:
        hours = int(window.total_seconds() // 3600)
        raise Unprocessable(
            f"{customer_number} last wrote to WhatsApp number {business_number} at "
            f"{last.isoformat()}, more than {hours} hours ago: WhatsApp allows free-form "
            "messages only within 24 hours of the customer's last message; send a template",
            code="whatsapp_window_closed",
        )


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
