"""Users: the tenant's platform users, messaged through the operator's provider account."""

from __future__ import annotations

from typing import Any

from msgspec import UNSET
from sqlalchemy import Row, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.db.tables import identities, users
from pigeon.errors import Conflict, NotFound, field_error
from pigeon.ids import is_object_id, new_object_id
from pigeon.pagination import Cursors
from pigeon.users.schemas import Channel, User, UserCreate, UserList, UserUpdate
from pigeon.validation import normalize_email, normalize_phone


def _user(row: Row[Any]) -> User:
    return User(
        id=row.id,
        username=row.username,
        data=row.data,
        channel=Channel(
            sms=row.channel_sms, whatsapp=row.channel_whatsapp, email=row.channel_email
        ),
        identity=row.identity_id,
        active=row.active,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _channel_value(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if name == "email":
        return normalize_email(value, field="channel.email")
    return normalize_phone(value, field=f"channel.{name}")


async def _check_identity(conn: AsyncConnection, account_id: str, identity_id: str | None) -> None:
    if identity_id is None:
        return
    found = None
    if is_object_id(identity_id):
        query = select(identities.c.id).where(
            identities.c.account_id == account_id, identities.c.id == identity_id
        )
        found = (await conn.execute(query)).first()
    if found is None:
        raise field_error(
            "identity", f"identity {identity_id} not found", code="identity_not_found"
        )


async def get_user_row(*, conn: AsyncConnection, account_id: str, user_id: str) -> Row[Any]:
    """The tenant's user row; another tenant's user answers exactly like a missing one."""
    row = None
    if is_object_id(user_id):
        query = select(users).where(users.c.account_id == account_id, users.c.id == user_id)
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    return row


async def create_user(*, conn: AsyncConnection, account_id: str, body: UserCreate) -> User:
    """Create a User after validating its channels and identity link."""
    await _check_identity(conn, account_id, body.identity)
    now = utcnow()
    user_id = new_object_id()
    values = {
        "id": user_id,
        "account_id": account_id,
        "username": body.username,
        "data": body.data,
        "channel_sms": _channel_value("sms", body.channel.sms),
        "channel_whatsapp": _channel_value("whatsapp", body.channel.whatsapp),
        "channel_email": _channel_value("email", body.channel.email),
        "identity_id": body.identity,
        "active": body.active,
        "created_at": now,
        "updated_at": now,
    }
    await _insert_or_conflict(conn, values)
    return await get_user(conn=conn, account_id=account_id, user_id=user_id)


async def _insert_or_conflict(conn: AsyncConnection, values: dict[str, Any]) -> None:
    try:
        async with conn.begin_nested():
            await conn.execute(users.insert().values(**values))
    except IntegrityError:
        raise Conflict(
            f"username {values['username']!r} is already taken", code="username_taken"
        ) from None


async def get_user(*, conn: AsyncConnection, account_id: str, user_id: str) -> User:
    """One User of the tenant."""
    return _user(await get_user_row(conn=conn, account_id=account_id, user_id=user_id))


async def list_users(
    *,
    conn: AsyncConnection,
    account_id: str,
    limit: int,
    cursor: str | None,
    cursors: Cursors,
) -> UserList:
    """A page of the tenant's Users, oldest first."""
    query = select(users).where(users.c.account_id == account_id)
    scope = f"users:{account_id}"
    after = cursors.decode(cursor, scope=scope)
    if after is not None:
        query = query.where(users.c.id > after)
    rows = (await conn.execute(query.order_by(users.c.id).limit(limit + 1))).all()
    page, cursor = cursors.page(rows, limit, lambda row: str(row.id), scope=scope)
    return UserList(items=[_user(r) for r in page], next_cursor=cursor)


async def update_user(
    *, conn: AsyncConnection, account_id: str, user_id: str, body: UserUpdate
) -> User:
    """Apply a partial update; `channel` merges field by field."""
    await get_user_row(conn=conn, account_id=account_id, user_id=user_id)
    values: dict[str, Any] = {}
    if body.username is not UNSET:
        values["username"] = body.username
    if body.data is not UNSET:
        values["data"] = body.data
    if body.active is not UNSET:
        values["active"] = body.active
    if body.identity is not UNSET:
        await _check_identity(conn, account_id, body.identity)
        values["identity_id"] = body.identity
    if body.channel is not UNSET:
        for name in ("sms", "whatsapp", "email"):
            value = getattr(body.channel, name)
            if value is not UNSET:
                values[f"channel_{name}"] = _channel_value(name, value)
    if values:
        values["updated_at"] = utcnow()
        try:
            async with conn.begin_nested():
                await conn.execute(
                    update(users)
                    .where(users.c.account_id == account_id, users.c.id == user_id)
                    .values(**values)
                )
        except IntegrityError:
            raise Conflict(
                f"username {values.get('username')!r} is already taken", code="username_taken"
            ) from None
    return await get_user(conn=conn, account_id=account_id, user_id=user_id)


async def delete_user(*, conn: AsyncConnection, account_id: str, user_id: str) -> None:
    """Delete a User; messages already sent to it keep their history."""
    await get_user_row(conn=conn, account_id=account_id, user_id=user_id)
    await conn.execute(delete(users).where(users.c.account_id == account_id, users.c.id == user_id))
