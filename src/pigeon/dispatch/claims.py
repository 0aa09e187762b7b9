"""The messages table is the queue: claim due rows under a lease that names the worker."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import (
    BindParameter,
    Connection,
    Row,
    Text,
    bindparam,
    or_,
    select,
    type_coerce,
    update,
)

from pigeon.clock import utcnow
from pigeon.db.tables import messages
from pigeon.messages import status
from pigeon.messages.reports import STATE_COLUMNS
from pigeon.providers.base import Outbound


class Claimed(NamedTuple):
    """A leased message: what the provider is given, the provider's id if one is stored (it
    was sent before), and the row's state as claimed (what its status change is decided on,
    `messages.reports.decide_moves`)."""

    message: Outbound
    provider_message_id: str | None
    state: Row[Any]


def _claim() -> Any:
    """The claim, built once: due rows, leased, their content as the JSON text it is stored as
    (on SQLite decoded by msgspec, not row by row by SQLAlchemy's JSON type), and the state
    their status changes are decided on (no second read of the same rows after the send)."""
    now: BindParameter[datetime] = bindparam("now")
    due = (
        select(messages.c.id)
        .where(
            messages.c.status_id == status.ACCEPTED.id,
            messages.c.next_attempt_at <= now,
            or_(messages.c.lease_expires_at.is_(None), messages.c.lease_expires_at < now),
        )
        .order_by(messages.c.next_attempt_at)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        update(messages)
        .where(messages.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=bindparam("worker_id"), lease_expires_at=bindparam("until"))
        .returning(
            messages.c.id,
            messages.c.account_id,
            messages.c.channel,
            messages.c.destination,
            messages.c.sender,
            type_coerce(messages.c.content, Text),
            messages.c.route,
            messages.c.provider_message_id,
            *(column for column in STATE_COLUMNS if column.name not in _OUTBOUND),
        )
    )


# The state columns the claim returns anyway, as Outbound's fields.
_OUTBOUND = {"id", "account_id", "channel", "destination"}


_CLAIM = _claim()


def claim_due_messages(
    conn: Connection, *, worker_id: str, limit: int, lease_seconds: float
) -> list[Claimed]:
    """Lease up to `limit` due messages to this worker, in the caller's transaction.

    On PostgreSQL the candidates are locked with SKIP LOCKED, so concurrent workers take
    disjoint batches without waiting for each other; SQLite has one writer at a time anyway.
    A lease that expires (its worker died) makes the row claimable again.
    """
    now = utcnow()
    rows = conn.execute(
        _CLAIM,
        {
            "now": now,
            "limit": limit,
            "worker_id": worker_id,
            "until": now + timedelta(seconds=lease_seconds),
        },
    )
    # The RETURNING columns are Outbound's fields in order, then the stored provider id, then
    # the rest of the state (named as `message_states` names them).
    return [
        Claimed(
            Outbound(row[0], row[1], row[2], row[3], row[4], _content(row[5]), row[6]), row[7], row
        )
        for row in rows
    ]


def _content(stored: Any) -> Any:
    # SQLite hands over the text; asyncpg decodes JSON columns itself (SQLAlchemy's codec).
    return msgspec.json.decode(stored) if isinstance(stored, str | bytes) else stored
