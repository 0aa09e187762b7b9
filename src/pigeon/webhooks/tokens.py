"""Webhook tokens: derived from the server's secret, never stored.

The token in `/v1/webhooks/infobip/{owner}/{token}/...` is HMAC-SHA256(key, owner), the key
derived from the server's secret (PIGEON_SECRET_KEY, or demo mode's generated one): reading the
database does not let one compute it, and the URLs can still be shown whenever they are asked
for (`pigeon webhooks`, `GET /v1/extensions/infobip`). Changing the secret changes the URLs.

Tokens that were stored before (migration 0007), or derived from a secret the server has since
replaced, keep working: their SHA-256 is kept in `webhook_token_hashes`. Both comparisons are
constant-time.

A server without any secret (neither PIGEON_SECRET_KEY nor demo mode) derives its tokens from
a random secret kept in the database (`platform_state`), and says so at start-up: the only
configuration in which reading the database would allow forging reports. Once a secret is set,
that one is retired: the hashes of the tokens it gave are kept, and it is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import accounts, platform_state, webhook_token_hashes
from pigeon.ids import new_token
from pigeon.messages.whatsapp import PLATFORM

log = structlog.get_logger("pigeon.webhooks")
DATABASE_SECRET = "webhook_secret"  # noqa: S105 - the name of a row, not a secret


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pigeon webhook tokens v1"
    ).derive(secret.encode())


def derive_token(secret: str, owner: str) -> str:
    """The webhook token of `owner` ("platform" or an account id) under `secret`."""
    digest = hmac.new(_key(secret), owner.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    """How a token that can no longer be derived is kept."""
    return hashlib.sha256(token.encode()).hexdigest()


def _configured_secret(settings: Settings) -> str | None:
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    return None


async def _database_secret(conn: AsyncConnection, *, create: bool) -> str | None:
    query = select(platform_state.c.value).where(platform_state.c.name == DATABASE_SECRET)
    found = (await conn.execute(query)).scalar_one_or_none()
    if found is not None or not create:
        return found
    try:
        async with conn.begin_nested():
            await conn.execute(
                platform_state.insert().values(name=DATABASE_SECRET, value=new_token())
            )
    except IntegrityError:
        pass  # another process created it first: use theirs
    return str((await conn.execute(query)).scalar_one())


async def _secret(conn: AsyncConnection, settings: Settings) -> str:
    secret = _configured_secret(settings) or await _database_secret(conn, create=True)
    assert secret is not None
    return secret


async def webhook_token(*, conn: AsyncConnection, settings: Settings, owner: str) -> str:
    """The token for `owner`'s webhook URLs."""
    return derive_token(await _secret(conn, settings), owner)


async def is_valid_token(
    *, conn: AsyncConnection, settings: Settings, owner: str, token: str
) -> bool:
    """Whether `token` authenticates `owner`'s webhooks (derived now, or kept from before)."""
    expected = await webhook_token(conn=conn, settings=settings, owner=owner)
    valid = hmac.compare_digest(expected.encode(), token.encode())
    presented = token_hash(token).encode()
    query = select(webhook_token_hashes.c.token_hash).where(webhook_token_hashes.c.owner == owner)
    for kept in (await conn.execute(query)).scalars():
        valid |= hmac.compare_digest(kept.encode(), presented)
    return valid


async def _keep_hashes(conn: AsyncConnection, owners: Iterable[str], secret: str) -> int:
    """Keep the hashes of the tokens `secret` gave these owners; how many were new."""
    wanted = {(owner, token_hash(derive_token(secret, owner))) for owner in owners}
    existing = await conn.execute(
        select(webhook_token_hashes.c.owner, webhook_token_hashes.c.token_hash)
    )
    new = wanted - {(row.owner, row.token_hash) for row in existing}
    now = utcnow()
    if new:
        await conn.execute(
            webhook_token_hashes.insert(),
            [{"owner": o, "token_hash": h, "created_at": now} for o, h in sorted(new)],
        )
    return len(new)


async def prepare_webhook_secret(
    engine: AsyncEngine, settings: Settings, *, older: list[str]
) -> None:
    """At start-up: create the database's secret if the server has none; or, with a secret,
    keep the tokens of `older` secrets and of the database's one working, and delete the latter.
    """
    current = _configured_secret(settings)
    async with engine.begin() as conn:
        if current is None:
            await _database_secret(conn, create=True)
            log.warning(
                "no PIGEON_SECRET_KEY: webhook tokens are derived from a secret kept in the "
                "database, so reading the database allows forging reports; set PIGEON_SECRET_KEY"
            )
            return
        database_secret = await _database_secret(conn, create=False)
        retiring = [s for s in [*older, database_secret] if s and s != current]
        if not retiring:
            return
        owners = [PLATFORM, *(await conn.execute(select(accounts.c.id))).scalars()]
        kept = sum([await _keep_hashes(conn, owners, secret) for secret in retiring])
        if database_secret is not None:
            await conn.execute(
                delete(platform_state).where(platform_state.c.name == DATABASE_SECRET)
            )
        if kept:
            log.info("webhook URLs of an earlier secret still work", kept=kept)
