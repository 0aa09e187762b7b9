"""The messages table is the queue: claim due rows under a lease that names the worker."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.clock import utcnow
from pigeon.db.tables import messages
from pigeon.messages import status
from pigeon.providers.base import Outbound


async def claim_due_messages(
    engine: AsyncEngine, *, worker_id: str, limit: int, lease_seconds: float
) -> list[tuple[Outbound, str | None]]:
    """Lease up to `limit` due messages to this worker; each with its stored provider id.

    On PostgreSQL the candidates are locked with SKIP LOCKED, so concurrent workers take
    disjoint batches without waiting for each other; SQLite has one writer at a time anyway.
    A lease that expires (its worker died) makes the row claimable again.
    """
    now = utcnow()
    due = (
        select(messages.c.id)
        .where(
            messages.c.status_id == status.ACCEPTED.id,
            messages.c.next_attempt_at <= now,
            or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
        )
        .order_by(messages.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with engine.begin() as conn:
        rows = await conn.execute(
            update(messages)
            .where(messages.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(
                messages.c.id,
                messages.c.account_id,
                messages.c.channel,
                messages.c.destination,
                messages.c.sender,
                messages.c.content,
                messages.c.route,
                messages.c.provider_message_id,
            )
        )
        # The RETURNING columns are Outbound's fields in order, then the stored provider id.
        return [(Outbound(*row[:-1]), row[-1]) for row in rows]
