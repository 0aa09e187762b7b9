"""Planning a batch of sends: read what it needs in a few keyed queries, decide each request.

The rules are pure functions over rows already read (`rules`): a batch of hundreds of sends
reads its users, identities, extensions and WhatsApp windows once, then decides each request
and builds the rows to insert (`Writes`). Planning writes nothing and takes no lock; each
engine's writer inserts the rows (`sqlite_accept`, `pg_accept`).

A batch is first planned without reading its idempotency records (`read_keys=False`): the
writes check them, on index pages they are about to change anyway, and fail with KeyInUse if
a key has a live record (a retried request). Only then is it planned again with the records
read, to replay their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Connection, select, tuple_

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.lookup import rows_by_key
from pigeon.db.tables import (
    idempotency_keys,
    identities,
    infobip_extensions,
    users,
    whatsapp_interactions,
)
from pigeon.errors import PigeonError, Unprocessable
from pigeon.idempotency.store import Scope, StoredResponse
from pigeon.ids import new_message_id
from pigeon.messages import status
from pigeon.messages.rules import (
    Draft,
    check_whatsapp_window,
    person_destination,
    platform_sender,
    user_destination,
)
from pigeon.messages.schemas import AcceptedMessage, Channel, SendResponse
from pigeon.messages.whatsapp import PLATFORM

Outcome = StoredResponse | PigeonError
# What an accepted send answers, and so its idempotency record's status_code (a refused send
# is not stored).
ACCEPTED_STATUS_CODE = 200
# What every new message starts with: PENDING_ACCEPTED, no attempts yet, due at once, so
# next_attempt_at and updated_at are its created_at (SQLite's trigger writes these itself:
# `sqlite_batch`).
NEW_MESSAGE_STATE = {
    "status_id": status.ACCEPTED.id,
    "group_id": status.ACCEPTED.groupId,
    "attempts": 0,
}


class KeyCollision(Exception):
    """Another process stored one of a batch's idempotency keys after the batch read them."""


@dataclass(slots=True)
class SendRequest:
    """One send, validated: its recipient still to be resolved against the database."""

    account_id: str
    recipient_type: str  # "user", "person" or "app"
    recipient: str  # a user id, an identity id, or the normalised `to` of an app message
    channel: Channel
    content: dict[str, Any]
    scope: Scope | None = None
    scope_id: bytes | None = None
    fingerprint: str | None = None
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


_RECORD = ("scope", "fingerprint", "status_code", "response_body", "expires_at")


def _ids(items: Sequence[SendRequest], kind: str) -> list[str]:
    return sorted({i.recipient for i in items if i.recipient_type == kind})


def _by_key(
    conn: Connection, table: Any, key: str, values: list[str], columns: tuple[str, ...]
) -> dict[str, Any]:
    return {getattr(row, key): row for row in rows_by_key(conn, table, key, values, columns)}


# The columns the rules read (`rules.user_destination`, `rules.person_destination`): the
# others (JSON documents, timestamps) would be decoded for nothing.
_USER = ("id", "account_id", "active", "channel_sms", "channel_whatsapp", "channel_email")
_IDENTITY = ("id", "account_id", "type", "person")
_EXTENSION = ("account_id", "sms_sender", "whatsapp_sender", "email_sender")


class _Batch:
    """Everything one batch needs from the database, read in a handful of queries."""

    def __init__(
        self, conn: Connection, items: Sequence[SendRequest], now: datetime, read_keys: bool
    ) -> None:
        self.conn = conn
        self.users = _by_key(conn, users, "id", _ids(items, "user"), _USER)
        self.identities = _by_key(conn, identities, "id", _ids(items, "person"), _IDENTITY)
        accounts = sorted({i.account_id for i in items if i.recipient_type == "person"})
        self.extensions = _by_key(conn, infobip_extensions, "account_id", accounts, _EXTENSION)
        self.records: dict[bytes, Any] = {}  # live ones: an expired record is replaced
        scopes = [i.scope_id for i in items if i.scope_id] if read_keys else []
        for record in rows_by_key(conn, idempotency_keys, "scope", scopes, _RECORD):
            if record.expires_at > now:
                self.records[record.scope] = record

    def last_inbound(self, triples: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Any]:
        if not triples:
            return {}
        key = tuple_(
            whatsapp_interactions.c.owner,
            whatsapp_interactions.c.business_number,
            whatsapp_interactions.c.customer_number,
        )
        rows = self.conn.execute(select(whatsapp_interactions).where(key.in_(triples)))
        return {(r.owner, r.business_number, r.customer_number): r.last_inbound_at for r in rows}


def _draft(item: SendRequest, batch: _Batch, settings: Settings) -> Draft:
    """Resolve one request's destination and sender (no WhatsApp window yet)."""
    if item.recipient_type == "user":
        user = batch.users.get(item.recipient)
        destination = user_destination(user, item.recipient, item.account_id, item.channel)
        return Draft(
            item.account_id,
            item.channel,
            "user",
            item.recipient,
            destination,
            "platform",
            platform_sender(settings, item.channel),
            item.content,
        )
    if item.recipient_type == "person":
        identity = batch.identities.get(item.recipient)
        destination, sender = person_destination(
            identity,
            item.recipient,
            item.account_id,
            item.channel,
            batch.extensions.get(item.account_id),
        )
        return Draft(
            item.account_id,
            item.channel,
            "person",
            item.recipient,
            destination,
            "tenant",
            sender,
            item.content,
        )
    return Draft(
        item.account_id,
        item.channel,
        "app",
        None,
        item.recipient,
        "platform",
        platform_sender(settings, item.channel),
        item.content,
    )


def _window_key(draft: Draft) -> tuple[str, str, str]:
    owner = draft.account_id if draft.route == "tenant" else PLATFORM
    return owner, draft.sender or "", draft.destination


@dataclass(slots=True)
class Writes:
    """What a planned batch inserts: its new messages (each with a first event), and each
    message's idempotency record (None for a request without an idempotency-key)."""

    now: datetime
    messages: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any] | None] = field(default_factory=list)


def plan_batch(
    conn: Connection, items: Sequence[SendRequest], settings: Settings, *, read_keys: bool = True
) -> tuple[list[Outcome], Writes]:
    """Read what the batch needs and apply the rules: each request's outcome, and the rows
    to insert for those accepted (by the engine's writer).

    With `read_keys=False` the idempotency records are not read: the plan takes every key as
    new, and its writes raise KeyInUse if one is not (`sqlite_batch`, `pg_batch`).
    """
    now = utcnow()
    batch = _Batch(conn, items, now, read_keys)
    outcomes: list[Outcome | Draft] = []
    for item in items:
        record = batch.records.get(item.scope_id) if item.scope_id else None
        if record is not None:
            outcomes.append(_replay(record, item))
            continue
        try:
            outcomes.append(_draft(item, batch, settings))
        except PigeonError as exc:
            outcomes.append(exc)
    whatsapp = [o for o in outcomes if isinstance(o, Draft) and o.channel == "whatsapp"]
    inbound = batch.last_inbound([_window_key(d) for d in whatsapp])
    window = timedelta(seconds=settings.whatsapp_window_seconds)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Draft) and outcome.channel == "whatsapp":
            owner, business, customer = _window_key(outcome)
            try:
                check_whatsapp_window(
                    inbound.get((owner, business, customer)),
                    business_number=business,
                    customer_number=customer,
                    window=window,
                    now=now,
                    template="template" in outcome.content,
                )
            except PigeonError as exc:
                outcomes[index] = exc
    return _rows(items, outcomes, Writes(now), settings)


def _replay(record: Any, item: SendRequest) -> Outcome:
    if record.fingerprint != item.fingerprint:
        return Unprocessable(
            "this idempotency-key was already used with a different request body",
            code="idempotency_key_reused",
        )
    return StoredResponse(record.status_code, record.response_body.encode(), replayed=True)


def _rows(
    items: Sequence[SendRequest],
    outcomes: list[Outcome | Draft],
    writes: Writes,
    settings: Settings,
) -> tuple[list[Outcome], Writes]:
    now = writes.now
    message_rows, key_rows = writes.messages, writes.keys
    results: list[Outcome] = []
    expires = now + timedelta(seconds=settings.idempotency_ttl_seconds)
    for item, outcome in zip(items, outcomes, strict=True):
        if not isinstance(outcome, Draft):
            results.append(outcome)
            continue
        message_id = new_message_id()
        message_rows.append(message_row(message_id, outcome, now))
        body = msgspec.json.encode(
            SendResponse(
                messages=[
                    AcceptedMessage(
                        messageId=message_id,
                        status=status.ACCEPTED,
                        destination=outcome.destination,
                    )
                ]
            )
        )
        if item.scope is None:
            key_rows.append(None)
        else:
            account_id, method, path, key = item.scope
            key_rows.append(
                {
                    "scope": item.scope_id,
                    "account_id": account_id,
                    "method": method,
                    "path": path,
                    "key": key,
                    "fingerprint": item.fingerprint,
                    "status_code": ACCEPTED_STATUS_CODE,
                    "response_body": body.decode(),
                    "created_at": now,
                    "expires_at": expires,
                }
            )
        results.append(StoredResponse(ACCEPTED_STATUS_CODE, body, replayed=False))
    return results, writes


def message_row(message_id: str, draft: Draft, now: datetime) -> dict[str, Any]:
    """The columns a new message sets; the rest start NULL. SQLite's trigger derives the
    state columns itself (`sqlite_batch`); PostgreSQL takes them from here."""
    return {
        "id": message_id,
        "account_id": draft.account_id,
        "channel": draft.channel,
        "recipient_type": draft.recipient_type,
        "recipient_id": draft.recipient_id,
        "destination": draft.destination,
        "route": draft.route,
        "sender": draft.sender,
        "content": draft.content,
        **NEW_MESSAGE_STATE,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
