"""Webhook endpoints: a tenant's URLs, the events each takes, and its signing secrets."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import webhook_attempts, webhook_deliveries, webhook_endpoints
from pigeon.errors import NotFound, field_error
from pigeon.events.catalogue import EVENT_TYPES
from pigeon.events.schemas import (
    DeliveryAttempt,
    DeliveryAttemptList,
    Endpoint,
    EndpointCreate,
    EndpointList,
    EndpointUpdate,
    EndpointWithSecret,
)
from pigeon.events.urls import check_endpoint_url
from pigeon.extensions.crypto import encrypt_secret
from pigeon.ids import is_object_id, new_object_id
from pigeon.pagination import Cursors

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
# After a rotation the previous secret signs too, for this long (two signatures per request).
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    """`whsec_` and the base64 of 32 random bytes (Standard Webhooks' format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _checked_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    unknown = [name for name in events if name not in EVENT_TYPES]
    if unknown:
        raise field_error(
            "events",
            f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}",
            code="unknown_event_type",
        )
    return sorted(set(events), key=EVENT_TYPES.index)


def _endpoint(row: Row[Any]) -> Endpoint:
    return Endpoint(
        id=row.id,
        url=row.url,
        events=list(row.events) if row.events is not None else list(EVENT_TYPES),
        description=row.description,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        disabled_reason=row.disabled_reason,
    )


def _with_secret(endpoint: Endpoint, secret: str) -> EndpointWithSecret:
    fields = {name: getattr(endpoint, name) for name in Endpoint.__struct_fields__}
    return EndpointWithSecret(**fields, secret=secret)


async def _row(*, conn: AsyncConnection, account_id: str, endpoint_id: str) -> Row[Any]:
    row = None
    if is_object_id(endpoint_id):
        query = select(webhook_endpoints).where(
            webhook_endpoints.c.account_id == account_id, webhook_endpoints.c.id == endpoint_id
        )
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found", code="endpoint_not_found")
    return row


async def create_endpoint(
    *, conn: AsyncConnection, account_id: str, body: EndpointCreate, settings: Settings
) -> EndpointWithSecret:
    """A new endpoint, enabled, with a new secret shown in this answer only."""
    url = await check_endpoint_url(body.url, settings)
    secret = new_secret()
    now = utcnow()
    endpoint_id = new_object_id()
    await conn.execute(
        webhook_endpoints.insert().values(
            id=endpoint_id,
            account_id=account_id,
            url=url,
            events=_checked_events(body.events),
            description=body.description,
            enabled=True,
            secret=encrypt_secret(secret, settings),
            created_at=now,
            updated_at=now,
        )
    )
    row = await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    return _with_secret(_endpoint(row), secret)


async def get_endpoint(*, conn: AsyncConnection, account_id: str, endpoint_id: str) -> Endpoint:
    return _endpoint(await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id))


async def list_endpoints(
    *, conn: AsyncConnection, account_id: str, limit: int, cursor: str | None, cursors: Cursors
) -> EndpointList:
    """A page of the tenant's endpoints, oldest first."""
    query = select(webhook_endpoints).where(webhook_endpoints.c.account_id == account_id)
    scope = f"webhook-endpoints:{account_id}"
    after = cursors.decode(cursor, scope=scope)
    if after is not None:
        query = query.where(webhook_endpoints.c.id > after)
    rows = (await conn.execute(query.order_by(webhook_endpoints.c.id).limit(limit + 1))).all()
    page, next_cursor = cursors.page(rows, limit, lambda row: str(row.id), scope=scope)
    return EndpointList(items=[_endpoint(row) for row in page], next_cursor=next_cursor)


async def update_endpoint(
    *,
    conn: AsyncConnection,
    account_id: str,
    endpoint_id: str,
    body: EndpointUpdate,
    settings: Settings,
) -> Endpoint:
    """Change the fields given; enabling again clears why it was disabled and its failures."""
    await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    values: dict[str, Any] = {"updated_at": utcnow()}
    if isinstance(body.url, str):
        values["url"] = await check_endpoint_url(body.url, settings)
    if body.events is None or isinstance(body.events, list):
        values["events"] = _checked_events(body.events)
    if isinstance(body.description, str):
        values["description"] = body.description
    if isinstance(body.enabled, bool):
        values["enabled"] = body.enabled
        values["disabled_reason"] = None if body.enabled else "disabled by the tenant"
        if body.enabled:
            values["failing_since"] = None
    await conn.execute(
        update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id).values(**values)
    )
    return await get_endpoint(conn=conn, account_id=account_id, endpoint_id=endpoint_id)


async def delete_endpoint(*, conn: AsyncConnection, account_id: str, endpoint_id: str) -> None:
    """The endpoint, its queued deliveries and its attempt log."""
    await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    await conn.execute(
        delete(webhook_attempts).where(webhook_attempts.c.endpoint_id == endpoint_id)
    )
    await conn.execute(
        delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
    )
    await conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id))


async def rotate_secret(
    *, conn: AsyncConnection, account_id: str, endpoint_id: str, settings: Settings
) -> EndpointWithSecret:
    """A new secret; the current one keeps signing beside it for ROTATION_OVERLAP."""
    row = await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    secret = new_secret()
    now = utcnow()
    await conn.execute(
        update(webhook_endpoints)
        .where(webhook_endpoints.c.id == endpoint_id)
        .values(
            secret=encrypt_secret(secret, settings),
            previous_secret=row.secret,
            rotated_at=now,
            updated_at=now,
        )
    )
    return _with_secret(
        await get_endpoint(conn=conn, account_id=account_id, endpoint_id=endpoint_id), secret
    )


def _attempt(row: Row[Any]) -> DeliveryAttempt:
    return DeliveryAttempt(
        id=str(row.id),
        delivery_id=str(row.delivery_id),
        event_id=row.event_id,
        event_type=row.event_type,
        attempt=row.attempt,
        attempted_at=row.at,
        http_status=row.http_status,
        error=row.error,
        duration_ms=row.duration_ms,
        response=row.response,
        state=row.state,
        next_attempt_at=row.next_attempt_at,
    )


async def list_attempts(
    *,
    conn: AsyncConnection,
    account_id: str,
    endpoint_id: str,
    limit: int,
    cursor: str | None,
    cursors: Cursors,
) -> DeliveryAttemptList:
    """A page of the endpoint's delivery attempts, newest first."""
    await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    query = select(webhook_attempts).where(webhook_attempts.c.endpoint_id == endpoint_id)
    scope = f"webhook-deliveries:{account_id}:{endpoint_id}"
    before = cursors.decode(cursor, scope=scope)
    if before is not None:
        if not before.isdigit():  # signed by this API, so never: an attempt's id is all it issues
            raise field_error("cursor", "not a cursor this API issued", code="invalid_cursor")
        query = query.where(webhook_attempts.c.id < int(before))
    query = query.order_by(webhook_attempts.c.id.desc()).limit(limit + 1)
    rows = (await conn.execute(query)).all()
    page, next_cursor = cursors.page(rows, limit, lambda row: str(row.id), scope=scope)
    return DeliveryAttemptList(items=[_attempt(row) for row in page], next_cursor=next_cursor)


async def recover(
    *, conn: AsyncConnection, account_id: str, endpoint_id: str, since: datetime
) -> int:
    """Queue again every failed delivery of events since `since`; how many."""
    await _row(conn=conn, account_id=account_id, endpoint_id=endpoint_id)
    now = utcnow()
    result = await conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.endpoint_id == endpoint_id,
            webhook_deliveries.c.state == "failed",
            webhook_deliveries.c.created_at >= since,
        )
        .values(
            state="pending",
            attempts=0,
            next_attempt_at=now,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )
    return int(result.rowcount)


async def failing_count(*, conn: AsyncConnection, endpoint_id: str) -> int:
    """How many of the endpoint's deliveries ended failed (for tests and the console)."""
    query = select(func.count()).where(
        webhook_deliveries.c.endpoint_id == endpoint_id, webhook_deliveries.c.state == "failed"
    )
    return int((await conn.execute(query)).scalar_one())
