"""Console sign-in: an API key buys a server-side session; forms carry a CSRF token.

The cookie holds a random token and nothing else (never the API key); the database keeps its
SHA-256, the account, the key it was opened with, the session's form token and its expiry. A
session ends when it expires, on sign-out (its row is deleted) or when its key is revoked.
The sign-in form itself, before any session exists, is protected by a double-submit cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.accounts.service import hash_key
from pigeon.clock import utcnow
from pigeon.db.tables import api_keys, console_sessions
from pigeon.ids import new_token

SESSION_COOKIE = "pigeon_console"
LOGIN_CSRF_COOKIE = "pigeon_console_login"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in tenant, as each console request sees it."""

    account_id: str
    key_id: str
    csrf_token: str
    token_hash: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(expected: str | None, given: str | None) -> bool:
    """A form token check, in constant time; a missing one never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def sign_in(
    *, conn: AsyncConnection, api_key: str, lifetime_seconds: int
) -> tuple[str, ConsoleSession] | None:
    """Open a session for a valid, unrevoked key: the cookie's token and the session. None for
    any other key (which is not told apart: missing, unknown or revoked)."""
    row = (
        await conn.execute(
            select(api_keys.c.id, api_keys.c.account_id).where(
                api_keys.c.key_hash == hash_key(api_key), api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    now = utcnow()
    await conn.execute(delete(console_sessions).where(console_sessions.c.expires_at < now))
    token = new_token()
    session = ConsoleSession(row.account_id, row.id, new_token(), _digest(token))
    await conn.execute(
        console_sessions.insert().values(
            token_hash=session.token_hash,
            account_id=session.account_id,
            key_id=session.key_id,
            csrf_token=session.csrf_token,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime_seconds),
        )
    )
    return token, session


async def session_for(*, conn: AsyncConnection, token: str | None) -> ConsoleSession | None:
    """The live session a cookie's token names: unexpired, and its key not revoked."""
    if not token:
        return None
    query = (
        select(
            console_sessions.c.account_id, console_sessions.c.key_id, console_sessions.c.csrf_token
        )
        .join(api_keys, api_keys.c.id == console_sessions.c.key_id)
        .where(
            console_sessions.c.token_hash == _digest(token),
            console_sessions.c.expires_at > utcnow(),
            api_keys.c.revoked_at.is_(None),
        )
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return ConsoleSession(row.account_id, row.key_id, row.csrf_token, _digest(token))


async def sign_out(*, conn: AsyncConnection, session: ConsoleSession) -> None:
    """End a session for good: its token no longer opens anything."""
    await conn.execute(
        delete(console_sessions).where(console_sessions.c.token_hash == session.token_hash)
    )
