"""Applying status changes: idempotent, forward only, each change an event with its payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
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
    """Apply one report (see apply_statuses); True when the status moved."""
    sent = {report.message_id: values} if values else None
    return await apply_statuses(conn=conn, reports=[report], source=source, sent=sent) > 0


def _detail(report: StatusReport) -> dict[str, Any] | None:
    detail: dict[str, Any] = {}
    if report.error is not None:
        detail["error"] = report.error
    if report.raw is not None:
        detail["raw"] = report.raw
    return detail or None


_TRACKED = (
    "status_id",
    "group_id",
    "error",
    "done_at",
    "lease_owner",
    "lease_expires_at",
    "provider",
    "provider_message_id",
    "attempts",
    "sent_at",
)


async def apply_statuses(
    *,
    conn: AsyncConnection,
    reports: list[StatusReport],
    source: str,
    sent: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Apply many reports in a few statements; the number of status changes made.

    The rows are read under lock (FOR UPDATE on PostgreSQL; SQLite's writer holds the file),
    every change is decided here with the forward-only rule, then one executemany updates the
    rows and one inserts the events. `sent` carries what a worker learned per message (the
    provider's id, one more attempt), applied whether or not the status moves.
    """
    sent = sent or {}
    ids = sorted({r.message_id for r in reports} | set(sent))
    if not ids:
        return 0
    rows = await conn.execute(
        select(messages.c.id, *(messages.c[name] for name in _TRACKED))
        .where(messages.c.id.in_(ids))
        .with_for_update()
    )
    state = {row.id: dict(row._mapping) for row in rows}
    now = utcnow()
    events: list[dict[str, Any]] = []
    changed: set[str] = set()
    for message_id, values in sent.items():
        if message_id in state:
            state[message_id].update(values)
            changed.add(message_id)
    for report in reports:
        row = state.get(report.message_id)
        if row is None or not can_move(
            status_for(row["status_id"], row["group_id"]), report.status
        ):
            continue
        _move_row(row, report, now)
        changed.add(report.message_id)
        events.append(
            {
                "message_id": report.message_id,
                "status_id": report.status.id,
                "source": source,
                "at": now,
                "detail": _detail(report),
            }
        )
    if changed:
        await conn.execute(
            update(messages)
            .where(messages.c.id == bindparam("message_id"))
            .values({name: bindparam(name) for name in (*_TRACKED, "updated_at")}),
            [
                {"message_id": mid, **{n: state[mid][n] for n in _TRACKED}, "updated_at": now}
                for mid in sorted(changed)
            ],
        )
    if events:
        await conn.execute(message_events.insert(), events)
    return len(events)


def _move_row(row: dict[str, Any], report: StatusReport, now: Any) -> None:
    row["status_id"] = report.status.id
    row["group_id"] = report.status.groupId
    if report.error is not None:
        row["error"] = report.error
    elif report.status.group == Group.DELIVERED:
        row["error"] = None
    if report.status.is_final:
        row["done_at"] = now
        row["lease_owner"] = None
        row["lease_expires_at"] = None
