"""Applying status changes: idempotent, forward only, each change an event with its payload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon import metrics
from pigeon.clock import utcnow
from pigeon.db.bulk import insert_rows, update_rows, update_rows_if
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
# A row's state as `decide_moves` takes it (read by `message_states`, returned by a claim).
STATE_COLUMNS = (
    messages.c.id,
    messages.c.status_id,
    messages.c.group_id,
    messages.c.attempts,
    *(messages.c[name] for name in (*_SHOWN, *_FACTS)),
)


def message_states(
    ids: list[str], dialect: str, *, by: ColumnElement[str] = messages.c.id
) -> Select[Any]:
    """The rows' state that a change is decided on (`decide_moves`), in id order: the rows
    whose `by` (their id, or another column of the same type) is one of `ids`."""
    query = select(*STATE_COLUMNS)
    if dialect == "postgresql":
        # One array parameter: a thousand ids do not become a thousand bind parameters.
        listed = bindparam("ids", ids, type_=ARRAY(messages.c.id.type))
        query = query.where(by == any_(listed))
    else:
        query = query.where(by.in_(ids))
    return query.order_by(messages.c.id)


def _locked_rows(ids: list[str], dialect: str) -> Select[Any]:
    """The rows' state, locked in id order (so concurrent appliers cannot deadlock)."""
    return message_states(ids, dialect).with_for_update()


def read_states(conn: Connection, ids: Sequence[str]) -> Sequence[Any]:
    """The rows' state as they are now, unlocked (to decide changes before the write)."""
    if not ids:
        return []
    return conn.execute(message_states(sorted(set(ids)), conn.dialect.name)).all()


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


@dataclass(slots=True)
class Moves:
    """The status changes decided for a set of messages, and what they write.

    `seen` is each changed row's status and attempt count as it was read: the write of moves
    decided on rows read before its transaction checks that they are still so.
    """

    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    tenant_events: list[NewEvent] = field(default_factory=list)
    finals: list[metrics.Final] = field(default_factory=list)


def decide_moves(
    rows: Sequence[Any],
    *,
    reports: list[StatusReport],
    source: str,
    sent: dict[str, dict[str, Any]] | None = None,
    attempted: bool = False,
) -> Moves:
    """Every change `reports` make to the rows (the state `message_states` reads), with the
    forward-only rule, each with its history entry and tenant event, in the reports' order.

    `sent` carries what a worker learned per message (the provider's id, cleared lease),
    applied whether or not the status moves; with `attempted` each of those messages also
    counts one more attempt.
    """
    sent = sent or {}
    # Each message's current status (to decide with the forward-only rule) and attempt count,
    # what its events show, and its facts.
    by_id = {}
    state = {}
    moves = Moves()
    seen = moves.seen
    for row in rows:  # (a row's attributes are looked up by name: each once)
        message_id, status_id, attempts = row.id, row.status_id, row.attempts
        by_id[message_id] = row
        state[message_id] = [status_for(status_id, row.group_id), attempts]
        seen[message_id] = (status_id, attempts)
    now = utcnow()
    changes = moves.changes
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
            message = {  # what the event tells of the row, as this change leaves it
                "id": row.id,
                "account_id": row.account_id,
                "channel": row.channel,
                "destination": row.destination,
                "recipient_type": row.recipient_type,
                "recipient_id": row.recipient_id,
                **{name: change.get(name, getattr(row, name)) for name in _SHOWN},
            }
            moves.tenant_events.append(message_event(event_type, message, report.status, now))
        moves.history.append(_event(report.message_id, report.status, source, now, _detail(report)))
        if report.status.is_final:
            moves.finals.append(
                metrics.Final(row.channel, report.status.group.name, row.created_at, now)
            )
    for change in changes.values():
        change["updated_at"] = now
    return moves


def write_moves(conn: Connection, moves: Moves, *, if_unchanged: bool = False) -> bool:
    """Write decided moves: one statement per set of columns changed (a batch's changes are
    mostly alike), then the history and the tenants' events.

    With `if_unchanged` each row is updated only while its status and attempts are as seen;
    False (and nothing but some of the updates written: roll them back) when one was not.
    """
    alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for message_id in sorted(moves.changes):
        change = moves.changes[message_id]
        alike.setdefault(tuple(sorted(change)), []).append(change)
    for group in alike.values():
        if if_unchanged:
            seen = [moves.seen[change["id"]] for change in group]
            if update_rows_if(conn, messages, group, _GUARDED, seen) != len(group):
                return False
        else:
            update_rows(conn, messages, group)
    insert_rows(conn, message_events, moves.history)
    write_events(conn, moves.tenant_events)
    if moves.finals:
        finals = moves.finals
        metrics.on_commit(conn, lambda: metrics.count_finals(finals))
    return True


_GUARDED = ("status_id", "attempts")  # what `Moves.seen` holds, in this order


def move_statuses(
    conn: Connection,
    *,
    reports: list[StatusReport],
    source: str,
    sent: dict[str, dict[str, Any]] | None = None,
    attempted: bool = False,
    decided: Moves | None = None,
) -> int:
    """Apply many reports in a few statements; the number of status changes made.

    The one place status changes are written. The rows are read under lock (FOR UPDATE on
    PostgreSQL; SQLite's writer holds the file), every change is decided with the
    forward-only rule (`decide_moves`), then written with its history and the tenants'
    events (sent, delivered, failed) by the same transaction, in the order of the changes.

    `decided`: the same changes, decided before this transaction on rows read then
    (`read_states`), so that the lock is held only while they are written. They are written
    if none of those rows has changed status or attempts since; otherwise they are decided
    again here, on the locked rows.
    """
    if decided is not None:
        savepoint = conn.begin_nested()
        try:
            written = write_moves(conn, decided, if_unchanged=True)
        except BaseException:
            savepoint.rollback()
            raise
        if written:
            savepoint.commit()
            return len(decided.history)
        savepoint.rollback()
    ids = sorted({r.message_id for r in reports} | set(sent or {}))
    if not ids:
        return 0
    rows = conn.execute(_locked_rows(ids, conn.dialect.name)).all()
    moves = decide_moves(rows, reports=reports, source=source, sent=sent, attempted=attempted)
    write_moves(conn, moves)
    return len(moves.history)


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
