"""Applying status changes: idempotent, forward only, each change an event with its payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.db.tables import message_events, messages
from pigeon.messages.status import Group, Status, can_move, status_for


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A provider's word on one message, normalised, still carrying the raw payload."""

    message_id: str
    status: Status
    error: dict[str, Any] | None = None
    raw: Any = None


async def apply_status(
    *,
    conn: AsyncConnection,
    report: StatusReport,
    source: str,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a message to the report's status if that is forward; False when nothing changed.

    The update is conditional on the status just read. When a concurrent change (a worker
    recording its send while the delivery report arrives) wins, read again and retry: status
    only moves forward, so this ends after a few rounds.
    """
    for _ in range(5):
        current = (
            await conn.execute(
                select(messages.c.status_id, messages.c.group_id).where(
                    messages.c.id == report.message_id
                )
            )
        ).first()
        if current is None or not can_move(
            status_for(current.status_id, current.group_id), report.status
        ):
            return False
        if await _move(conn, report, current.status_id, source, values):
            return True
    return False


async def _move(
    conn: AsyncConnection,
    report: StatusReport,
    from_status: int,
    source: str,
    values: dict[str, Any] | None,
) -> bool:
    now = utcnow()
    changes: dict[str, Any] = {
        "status_id": report.status.id,
        "group_id": report.status.groupId,
        "updated_at": now,
        **(values or {}),
    }
    if report.error is not None:
        changes["error"] = report.error
    elif report.status.group == Group.DELIVERED:
        changes["error"] = None  # delivered after all: earlier transient errors are history
    if report.status.is_final:
        changes["done_at"] = now
        changes["lease_owner"] = None
        changes["lease_expires_at"] = None
    result = await conn.execute(
        update(messages)
        .where(messages.c.id == report.message_id, messages.c.status_id == from_status)
        .values(**changes)
    )
    if result.rowcount != 1:
        return False
    await conn.execute(
        message_events.insert().values(
            message_id=report.message_id,
            status_id=report.status.id,
            source=source,
            at=now,
            detail=_detail(report),
        )
    )
    return True


def _detail(report: StatusReport) -> dict[str, Any] | None:
    detail: dict[str, Any] = {}
    if report.error is not None:
        detail["error"] = report.error
    if report.raw is not None:
        detail["raw"] = report.raw
    return detail or None
