"""Accounts (tenants) and their API keys: keys are shown once and stored only as a hash."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.db.errors import unavailable
from pigeon.db.tables import accounts, api_keys
from pigeon.errors import NotFound, Unauthorized
from pigeon.ids import new_object_id, new_token

log = structlog.get_logger("pigeon.accounts")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    account_id: str
    key: str


def hash_key(key: str) -> str:
    """The stored form of an API key (keys are high-entropy, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_hint(key: str) -> str:
    """The last characters of a secret, safe to show."""
    return key[-4:]


async def create_account(
    *, conn: AsyncConnection, name: str, account_id: str | None = None
) -> Account:
    """Create a tenant."""
    account = Account(id=account_id or new_object_id(), name=name)
    await conn.execute(accounts.insert().values(id=account.id, name=name, created_at=utcnow()))
    return account


async def list_accounts(*, conn: AsyncConnection) -> list[Account]:
    """Every tenant, oldest first."""
    rows = await conn.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id))
    return [Account(id=r.id, name=r.name) for r in rows]


async def get_account(*, conn: AsyncConnection, account_id: str) -> Account:
    """One tenant, or NotFound."""
    row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    if row is None:
        raise NotFound(f"account {account_id} not found", code="account_not_found")
    return Account(id=row.id, name=row.name)


async def create_key(
    *, conn: AsyncConnection, account_id: str, key: str | None = None
) -> CreatedKey:
    """Create an API key for an account; the clear key is returned here and nowhere else."""
    await get_account(conn=conn, account_id=account_id)
    clear = key or new_token()
    created = CreatedKey(id=f"key_{new_object_id()}", account_id=account_id, key=clear)
    await conn.execute(
        api_keys.insert().values(
            id=created.id,
            account_id=account_id,
            key_hash=hash_key(clear),
            hint=key_hint(clear),
            created_at=utcnow(),
        )
    )
    return created


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as an operator may see it: never the key, only its last characters."""

    id: str
    account_id: str
    hint: str
    created_at: datetime
    revoked_at: datetime | None


async def list_keys(*, conn: AsyncConnection, account_id: str | None = None) -> list[KeyInfo]:
    """Every API key (of one account), oldest first."""
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if account_id is not None:
        await get_account(conn=conn, account_id=account_id)
        query = query.where(api_keys.c.account_id == account_id)
    return [
        KeyInfo(r.id, r.account_id, r.hint, r.created_at, r.revoked_at)
        for r in await conn.execute(query)
    ]


async def revoke_key(*, conn: AsyncConnection, key_id: str) -> None:
    """Revoke a key; requests with it answer 401 from then on (within the cache's lifetime)."""
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount == 0:
        exists = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
        if exists is None:
            raise NotFound(f"API key {key_id} not found", code="api_key_not_found")


class KeyAuthenticator:
    """Resolves API keys to account ids, caching each answer for `ttl_seconds` (1 s) so a
    revocation lands within about a second.

    A key in use is looked up again in the background once its answer is half-way to expiry,
    while the cached answer goes on serving: under load no request waits for the lookup, and
    no answer older than `ttl_seconds` is ever used.
    """

    def __init__(self, engine: AsyncEngine, *, ttl_seconds: float = 1.0) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # by key

    async def authenticate(self, key: str | None) -> str:
        """The account id the key belongs to; Unauthorized when missing, unknown or revoked."""
        if not key:
            raise Unauthorized(
                "missing API key: send it in the x-api-key header", code="missing_api_key"
            )
        # The cache is keyed by the key itself (process memory only): no hashing per request.
        entry = self._fresh(key)
        account_id = entry[1] if entry is not None else await self._look_up(key)
        if account_id is None:
            raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
        return account_id

    def cached(self, key: str) -> str | None:
        """The account id of a key answered within the last second, without awaiting."""
        entry = self._fresh(key)
        return None if entry is None else entry[1]

    def _fresh(self, key: str) -> tuple[float, str | None] | None:
        """The key's unexpired cache entry; one past half its life starts a refresh."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        left = entry[0] - time.monotonic()
        if left <= 0:
            return None
        if left < self._ttl / 2 and key not in self._refreshing:
            task = asyncio.get_running_loop().create_task(self._refresh(key))
            self._refreshing[key] = task
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        return entry

    async def _refresh(self, key: str) -> None:
        try:
            await self._look_up(key)
        except Exception as exc:
            # The request that next finds the entry expired looks the key up itself.
            if unavailable(exc) is None:  # a sick database is logged once an incident
                log.warning("API key lookup failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop the background refreshes (before the engine is disposed)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _look_up(self, key: str) -> str | None:
        """Look the key up (once, however many requests ask at the same time) and cache it."""
        account_id = await self._lookup_once(hash_key(key))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self._ttl, account_id)
        return account_id

    async def _lookup_once(self, digest: str) -> str | None:
        """One database lookup per key at a time: concurrent requests share its answer."""
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            account_id = await self._lookup(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(account_id)
        finally:
            del self._pending[digest]
        return account_id

    async def _lookup(self, digest: str) -> str | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.account_id).where(
                        api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return None if row is None else str(row.account_id)
