"""Applying status changes: idempotent, forward only, each change an event with its payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.db.bulk import insert_rows, update_rows
from pigeon.db.tables import message_events, messages
from pigeon.events.catalogue import message_event_type
from pigeon.events.service import NewEvent, message_event, record_events
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


# Read, never written here: for the metrics of final statuses, and what a tenant's event says
# about the message.
_FACTS = ("account_id", "channel", "destination", "recipient_type", "recipient_id", "created_at")


def _locked_rows(ids: list[str], dialect: str) -> Select[Any]:
    """The rows' tracked columns, locked in id order (so concurrent appliers cannot deadlock)."""
    query = select(messages.c.id, *(messages.c[name] for name in (*_TRACKED, *_FACTS)))
    if dialect == "postgresql":
        # One array parameter: a thousand ids do not become a thousand bind parameters.
        listed = bindparam("ids", ids, type_=ARRAY(messages.c.id.type))
        query = query.where(messages.c.id == any_(listed))
    else:
        query = query.where(messages.c.id.in_(ids))
    return query.order_by(messages.c.id).with_for_update()


async def apply_statuses(
    *,
    conn: AsyncConnection,
    reports: list[StatusReport],
    source: str,
    sent: dict[str, dict[str, Any]] | None = None,
    attempted: bool = False,
) -> int:
    """Apply many reports in a few statements; the number of status changes made.

    The rows are read under lock (FOR UPDATE on PostgreSQL; SQLite's writer holds the file),
    every change is decided here with the forward-only rule, then one statement updates the
    rows and one inserts the history; the tenants' events (sent, delivered, failed) are written
    by the same transaction, in the order of the changes. `sent` carries what a worker learned
    per message (the provider's id, cleared lease), applied whether or not the status moves;
    with `attempted` each of those messages also counts one more attempt, from the locked row.
    """
    sent = sent or {}
    ids = sorted({r.message_id for r in reports} | set(sent))
    if not ids:
        return 0
    rows = await conn.execute(_locked_rows(ids, conn.dialect.name))
    names = tuple(rows.keys())
    state = {row[0]: dict(zip(names, row, strict=True)) for row in rows}
    facts = {mid: {name: row.pop(name) for name in _FACTS} for mid, row in state.items()}
    now = utcnow()
    events: list[dict[str, Any]] = []
    tenant_events: list[NewEvent] = []
    finals: list[metrics.Final] = []
    changed: set[str] = set()
    for message_id, values in sent.items():
        row = state.get(message_id)
        if row is not None:
            row.update(values)
            if attempted:
                row["attempts"] += 1
            changed.add(message_id)
    for report in reports:
        row = state.get(report.message_id)
        if row is None:
            continue
        before = status_for(row["status_id"], row["group_id"])
        if not can_move(before, report.status):
            continue
        _move_row(row, report, now)
        about = facts[report.message_id]
        event_type = message_event_type(about["channel"], before, report.status)
        if event_type is not None:
            message = {**row, **about}
            tenant_events.append(message_event(event_type, message, report.status, now))
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
        if report.status.is_final:
            finals.append(
                metrics.Final(about["channel"], report.status.group.name, about["created_at"], now)
            )
    if changed:
        updates = [{**state[mid], "updated_at": now} for mid in sorted(changed)]
        await conn.run_sync(update_rows, messages, updates)
    await conn.run_sync(insert_rows, message_events, events)
    await record_events(conn=conn, new_events=tenant_events)
    if finals:
        metrics.on_commit(conn, lambda: metrics.count_finals(finals))
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
