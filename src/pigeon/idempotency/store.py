"""Idempotency keys: a retried request replays the first answer and never acts twice.

Keys are scoped to (account, method, path). The record is written in the same transaction as
the work it guards, so either both are durable or neither is. A request still in flight in this
process answers 409; a concurrent one in another process loses on the primary key at commit and
replays the winner's answer instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pigeon.clock import utcnow
from pigeon.db.tables import idempotency_keys
from pigeon.errors import Conflict, Unprocessable, field_error

MAX_KEY_LENGTH = 255
Scope = tuple[str, str, str, str]
# A scope is stored as the first SCOPE_BYTES bytes of its SHA-256 (see `scope_id`).
SCOPE_BYTES = 16


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: bytes
    replayed: bool


class KeyInUse(Exception):
    """A batch planned without reading its idempotency records holds a key with a live one."""


def replace_expired(columns: Sequence[str]) -> str:
    """The ON CONFLICT clause of an insert into idempotency_keys (SQLite and PostgreSQL alike):
    a key's expired record is replaced by the new one, a live one is left as it is (the insert
    then changes no row)."""
    assignments = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c != "scope")
    return (
        f"ON CONFLICT (scope) DO UPDATE SET {assignments}"
        " WHERE idempotency_keys.expires_at <= excluded.created_at"
    )


def fingerprint(body: bytes) -> str:
    """A hash of the request body that ignores key order and white space in JSON."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def scope_id(scope: Scope) -> bytes:
    """The stored identity of a scope: a hash of account, method, path and key.

    128 bits of SHA-256, as bytes: its index is the one every accepted send inserts into at a
    random place (a commit of 16 sends writes about 16 of its pages), and a quarter of the
    64-character hex digest it once was. Two scopes share an id with negligible probability
    (about 10^-19 after 10^10 records), and a tenant cannot aim at another's: the account
    is part of what is hashed.
    """
    return hashlib.sha256("\x1f".join(scope).encode()).digest()[:SCOPE_BYTES]


def check_key(key: str) -> str:
    """A usable idempotency key, or a 422 naming the header."""
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise field_error(
            "idempotency-key",
            f"must be 1 to {MAX_KEY_LENGTH} characters",
            code="invalid_idempotency_key",
        )
    return key


class IdempotencyStore:
    """Runs guarded writes: replay on a repeat, 422 on a reused key, 409 while in flight."""

    def __init__(self, engine: AsyncEngine, *, reader: AsyncEngine, ttl_seconds: int) -> None:
        self._engine = engine
        self._reader = reader
        self._ttl = timedelta(seconds=ttl_seconds)
        self._in_flight: set[Scope] = set()

    async def run(
        self,
        *,
        scope: Scope | None,
        body: bytes,
        action: Callable[[AsyncConnection], Awaitable[Any]],
        status_code: int,
    ) -> StoredResponse:
        """Run `action` in one transaction with the key's record; replay if it ran before."""
        if scope is None:
            async with self._engine.begin() as conn:
                return StoredResponse(status_code, _encode(await action(conn)), replayed=False)
        print_ = fingerprint(body)
        if scope in self._in_flight:
            raise Conflict(
                "a request with this idempotency-key is still being processed; retry shortly",
                code="idempotency_request_in_flight",
                headers={"Retry-After": "1"},
            )
        self._in_flight.add(scope)
        try:
            stored = await self._lookup(scope, print_)
            if stored is not None:
                return stored
            try:
                return await self._run_and_record(scope, print_, action, status_code)
            except IntegrityError:
                stored = await self._lookup(scope, print_)
                if stored is None:
                    raise
                return stored
        finally:
            self._in_flight.discard(scope)

    async def _run_and_record(
        self,
        scope: Scope,
        print_: str,
        action: Callable[[AsyncConnection], Awaitable[Any]],
        status_code: int,
    ) -> StoredResponse:
        now = utcnow()
        async with self._engine.begin() as conn:
            body = _encode(await action(conn))
            # Only an expired record may be replaced; a live one (committed by another process
            # since our lookup) makes the insert below fail, and the caller replays it.
            await conn.execute(
                delete(idempotency_keys).where(
                    _scope_clause(scope), idempotency_keys.c.expires_at <= now
                )
            )
            account_id, method, path, key = scope
            await conn.execute(
                idempotency_keys.insert().values(
                    scope=scope_id(scope),
                    account_id=account_id,
                    method=method,
                    path=path,
                    key=key,
                    fingerprint=print_,
                    status_code=status_code,
                    response_body=body.decode(),
                    created_at=now,
                    expires_at=now + self._ttl,
                )
            )
        return StoredResponse(status_code, body, replayed=False)

    async def _lookup(self, scope: Scope, print_: str) -> StoredResponse | None:
        async with self._reader.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        idempotency_keys.c.fingerprint,
                        idempotency_keys.c.status_code,
                        idempotency_keys.c.response_body,
                    ).where(_scope_clause(scope), idempotency_keys.c.expires_at > utcnow())
                )
            ).first()
        if row is None:
            return None
        if row.fingerprint != print_:
            raise Unprocessable(
                "this idempotency-key was already used with a different request body",
                code="idempotency_key_reused",
            )
        return StoredResponse(row.status_code, row.response_body.encode(), replayed=True)


def _scope_clause(scope: Scope) -> Any:
    return idempotency_keys.c.scope == scope_id(scope)


def _encode(result: Any) -> bytes:
    return msgspec.json.encode(result)
