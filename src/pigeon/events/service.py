"""Writing events: in the caller's transaction, with a delivery for each subscribed endpoint.

An event row is written by the same transaction as the change it tells (the caller's), so a
change without its event, or an event without its change, cannot be committed. Each event
gets one delivery row per enabled endpoint of its tenant that subscribes to its type, in the
same transaction too: the delivery worker's queue never misses an event. On PostgreSQL the
transaction also notifies `pigeon_events`, at commit, to wake the API processes' streams.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Connection, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.db.bulk import insert_rows
from pigeon.db.tables import events, webhook_deliveries, webhook_endpoints
from pigeon.messages.status import Status

NOTIFY_CHANNEL = "pigeon_events"
_RECIPIENT_TYPES = {"user": "user", "person": "identity", "app": "app"}


def new_event_ids(count: int) -> list[str]:
    """`count` event ids, made at once (one clock reading, one draw of random bytes): each
    `evt_` and 26 characters, microseconds since the epoch then random."""
    stamp = f"evt_{time.time_ns() // 1000:014x}"
    random = secrets.token_hex(6 * count)
    return [stamp + random[i : i + 12] for i in range(0, 12 * count, 12)]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write: for whom, of which type, about what, and its `data`."""

    account_id: str
    type: str
    subject_id: str | None
    data: dict[str, Any]
    at: datetime


def message_event(
    event_type: str, message: dict[str, Any], status: Status, at: datetime
) -> NewEvent:
    """A message event from the message's row as the change leaves it."""
    data = {
        "messageId": message["id"],
        "channel": message["channel"],
        "destination": message["destination"],
        "recipient": {
            "type": _RECIPIENT_TYPES.get(message["recipient_type"], message["recipient_type"]),
            "id": message["recipient_id"],
        },
        "status": status,
        "error": message["error"],
        "sentAt": message["sent_at"],
        "doneAt": message["done_at"],
    }
    return NewEvent(message["account_id"], event_type, message["id"], data, at)


def _body(event_id: str, event: NewEvent) -> str:
    return msgspec.json.encode(
        {"id": event_id, "type": event.type, "timestamp": event.at, "data": event.data}
    ).decode()


def _subscribes(endpoint_events: list[str] | None, event_type: str) -> bool:
    return endpoint_events is None or event_type in endpoint_events


async def record_events(*, conn: AsyncConnection, new_events: Sequence[NewEvent]) -> None:
    """Write events and their deliveries in the caller's transaction: a few statements in all."""
    if new_events:
        await conn.run_sync(write_events, new_events)


def write_events(conn: Connection, new_events: Sequence[NewEvent]) -> None:
    """`record_events` on a plain connection (a job of the process's writer, `db.writer`)."""
    if not new_events:
        return
    rows: list[dict[str, Any]] = []
    for event, event_id in zip(new_events, new_event_ids(len(new_events)), strict=True):
        rows.append(
            {
                "id": event_id,
                "account_id": event.account_id,
                "type": event.type,
                "message_id": event.subject_id,
                "created_at": event.at,
                "body": _body(event_id, event),
            }
        )
    insert_rows(conn, events, rows)
    accounts = sorted({event.account_id for event in new_events})
    subscribed = conn.execute(
        select(webhook_endpoints.c.id, webhook_endpoints.c.account_id, webhook_endpoints.c.events)
        .where(webhook_endpoints.c.account_id.in_(accounts), webhook_endpoints.c.enabled)
        .order_by(webhook_endpoints.c.id)
    )
    by_account: dict[str, list[Any]] = {}
    for endpoint in subscribed:
        by_account.setdefault(endpoint.account_id, []).append(endpoint)
    deliveries = [
        {
            "event_id": row["id"],
            "endpoint_id": endpoint.id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": row["created_at"],
            "created_at": row["created_at"],
            "updated_at": row["created_at"],
        }
        for row in rows
        for endpoint in by_account.get(row["account_id"], ())
        if _subscribes(endpoint.events, row["type"])
    ]
    insert_rows(conn, webhook_deliveries, deliveries)
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))
