"""Applying status changes: idempotent, forward only, each change an event with its payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.db.bulk import insert_rows, update_rows
from pigeon.db.tables import message_events, messages
from pigeon.events.catalogue import message_event_type
from pigeon.events.service import NewEvent, message_event, write_events
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


# Read, never written here: for the metrics of final statuses, and what a tenant's event says
# about the message.
_FACTS = ("account_id", "channel", "destination", "recipient_type", "recipient_id", "created_at")
# What a tenant's event shows of the message as the change leaves it.
_SHOWN = ("error", "sent_at", "done_at")


def _locked_rows(ids: list[str], dialect: str) -> Select[Any]:
    """The rows' state, locked in id order (so concurrent appliers cannot deadlock)."""
    query = select(
        messages.c.id,
        messages.c.status_id,
        messages.c.group_id,
        messages.c.attempts,
        *(messages.c[name] for name in (*_SHOWN, *_FACTS)),
    )
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
    """`move_statuses` in the caller's transaction on the async engine."""
    return await conn.run_sync(
        move_statuses, reports=reports, source=source, sent=sent, attempted=attempted
    )


def move_statuses(
    conn: Connection,
    *,
    reports: list[StatusReport],
    source: str,
    sent: dict[str, dict[str, Any]] | None = None,
    attempted: bool = False,
) -> int:
    """Apply many reports in a few statements; the number of status changes made.

    The one place status changes are written. The rows are read under lock (FOR UPDATE on
    PostgreSQL; SQLite's writer holds the file), every change is decided here with the
    forward-only rule, then one statement per set of columns updates the rows and one inserts
    the history; the tenants' events (sent, delivered, failed) are written by the same
    transaction, in the order of the changes. `sent` carries what a worker learned per
    message (the provider's id, cleared lease), applied whether or not the status moves; with
    `attempted` each of those messages also counts one more attempt, from the locked row.
    """
    sent = sent or {}
    ids = sorted({r.message_id for r in reports} | set(sent))
    if not ids:
        return 0
    rows = conn.execute(_locked_rows(ids, conn.dialect.name)).all()
    # Only the columns a change sets are written: each message's current status (to decide
    # with the forward-only rule) and attempt count, what its events show, and its facts.
    by_id = {row.id: row for row in rows}
    state = {row.id: [status_for(row.status_id, row.group_id), row.attempts] for row in rows}
    now = utcnow()
    events: list[dict[str, Any]] = []
    tenant_events: list[NewEvent] = []
    finals: list[metrics.Final] = []
    changes: dict[str, dict[str, Any]] = {}
    for message_id, values in sent.items():
        if message_id in state:
            change = changes[message_id] = {"id": message_id, **values}
            if attempted:
                change["attempts"] = state[message_id][1] + 1
    for report in reports:
        current = state.get(report.message_id)
        if current is None:
            continue
        before = current[0]
        if not can_move(before, report.status):
            continue
        current[0] = report.status
        change = changes.setdefault(report.message_id, {"id": report.message_id})
        _move(change, report, now)
        row = by_id[report.message_id]
        event_type = message_event_type(row.channel, before, report.status)
        if event_type is not None:
            message = {**row._asdict(), **change}  # the row as this change leaves it
            tenant_events.append(message_event(event_type, message, report.status, now))
        events.append(_event(report.message_id, report.status, source, now, _detail(report)))
        if report.status.is_final:
            finals.append(metrics.Final(row.channel, report.status.group.name, row.created_at, now))
    # One statement per set of columns changed (a batch's changes are mostly alike).
    alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for message_id in sorted(changes):
        change = changes[message_id]
        change["updated_at"] = now
        alike.setdefault(tuple(sorted(change)), []).append(change)
    for group in alike.values():
        update_rows(conn, messages, group)
    insert_rows(conn, message_events, events)
    write_events(conn, tenant_events)
    if finals:
        metrics.on_commit(conn, lambda: metrics.count_finals(finals))
    return len(events)


def _event(
    message_id: str, moved_to: Status, source: str, now: Any, detail: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "status_id": moved_to.id,
        "source": source,
        "at": now,
        "detail": detail,
    }


_DELIVERED = int(Group.DELIVERED)


def _move(change: dict[str, Any], report: StatusReport, now: Any) -> None:
    change["status_id"] = report.status.id
    change["group_id"] = report.status.groupId
    if report.error is not None:
        change["error"] = report.error
    elif report.status.groupId == _DELIVERED:
        change["error"] = None
    if report.status.is_final:
        change["done_at"] = now
        change["lease_owner"] = None
        change["lease_expires_at"] = None
