"""What the console shows that the API does not: the dashboard's counts, a message's delivery
attempts, the tenant's API keys. Every query is scoped to one account."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.db.tables import api_keys, delivery_attempts, messages
from pigeon.messages.status import Group

CHANNELS = ("sms", "whatsapp", "email")
GROUPS = tuple(group.name for group in Group)
FAILED = (Group.UNDELIVERABLE, Group.EXPIRED, Group.REJECTED)
QUEUED_STATUS = 26


def first_id_since(moment: datetime) -> str:
    """The smallest message id made at or after `moment` (ids start with their microsecond)."""
    return str(int(moment.timestamp() * 1_000_000) * 1_000_000)


def _hour(column: Any, dialect: str) -> ColumnElement[Any]:
    """A UTC timestamp column cut to its hour, as text `YYYY-MM-DD HH`."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD HH24'"))
    return func.substr(column, 1, 13)  # SQLite keeps UTC text: `YYYY-MM-DD HH:MM:SS...`


@dataclass
class Dashboard:
    since: datetime
    by_channel: dict[str, dict[str, int]]  # channel -> group name -> messages
    hours: list[datetime]
    accepted: list[int]
    delivered: list[int]
    failed: list[int]
    queue: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(groups.values()) for groups in self.by_channel.values())


async def dashboard(*, conn: AsyncConnection, account_id: str) -> Dashboard:
    """The last 24 hours of the tenant's messages: by channel and group, per hour, the queue."""
    now = utcnow()
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    since = now - timedelta(hours=24)
    recent = (messages.c.account_id == account_id, messages.c.id >= first_id_since(since))
    by_channel = {channel: dict.fromkeys(GROUPS, 0) for channel in CHANNELS}
    counts = select(messages.c.channel, messages.c.group_id, func.count()).where(*recent)
    for channel, group_id, count in await conn.execute(
        counts.group_by(messages.c.channel, messages.c.group_id)
    ):
        by_channel.setdefault(channel, dict.fromkeys(GROUPS, 0))[Group(group_id).name] = count

    dialect = conn.dialect.name
    hours = [first_hour + timedelta(hours=n) for n in range(24)]
    slot = {hour.strftime("%Y-%m-%d %H"): n for n, hour in enumerate(hours)}
    accepted, delivered, failed = [0] * 24, [0] * 24, [0] * 24
    created = _hour(messages.c.created_at, dialect)
    for hour, count in await conn.execute(
        select(created, func.count()).where(*recent).group_by(created)
    ):
        if hour in slot:
            accepted[slot[hour]] += count
    done = _hour(messages.c.done_at, dialect)
    finished = (
        select(done, messages.c.group_id, func.count())
        .where(*recent, messages.c.done_at.is_not(None))
        .group_by(done, messages.c.group_id)
    )
    for hour, group_id, count in await conn.execute(finished):
        if hour in slot:
            target = delivered if group_id == Group.DELIVERED else failed
            target[slot[hour]] += count

    queue: dict[str, tuple[int, datetime | None]] = dict.fromkeys(CHANNELS, (0, None))
    waiting = (
        select(messages.c.channel, func.count(), func.min(messages.c.created_at))
        .where(messages.c.account_id == account_id, messages.c.status_id == QUEUED_STATUS)
        .group_by(messages.c.channel)
    )
    for channel, count, oldest in await conn.execute(waiting):
        queue[channel] = (count, oldest)
    return Dashboard(since, by_channel, hours, accepted, delivered, failed, queue)


async def attempts(*, conn: AsyncConnection, message_id: str) -> list[Any]:
    """Every delivery attempt of a message (already checked to be the tenant's), oldest first."""
    query = (
        select(delivery_attempts)
        .where(delivery_attempts.c.message_id == message_id)
        .order_by(delivery_attempts.c.id)
    )
    return list((await conn.execute(query)).all())


async def keys(*, conn: AsyncConnection, account_id: str) -> list[Any]:
    """The tenant's API keys (ids and hints only), newest first."""
    query = (
        select(api_keys.c.id, api_keys.c.hint, api_keys.c.created_at, api_keys.c.revoked_at)
        .where(api_keys.c.account_id == account_id)
        .order_by(api_keys.c.created_at.desc(), api_keys.c.id)
    )
    return list((await conn.execute(query)).all())


async def owns_key(*, conn: AsyncConnection, account_id: str, key_id: str) -> bool:
    query = select(api_keys.c.id).where(
        api_keys.c.id == key_id, api_keys.c.account_id == account_id
    )
    return (await conn.execute(query)).first() is not None
