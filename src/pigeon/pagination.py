"""Cursor pagination: the cursor is an opaque, signed token wrapping the last id of a page.

A cursor carries the last id and an HMAC of it, bound to the list and the tenant it was issued
for, under a key kept in the database (`platform_state`, created on first start): every API
process of one database, before and after a restart, issues and accepts the same cursors. A
cursor the API did not issue (edited, truncated, from another list, tenant or installation,
or not ASCII at all) is answered 422 invalid_cursor, never with a page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.db.tables import platform_state
from pigeon.errors import field_error

T = TypeVar("T")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
KEY_NAME = "cursor_signing_key"  # its row in platform_state
MAC_BYTES = 12
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")
_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def _invalid() -> Exception:
    return field_error("cursor", "not a cursor this API issued", code="invalid_cursor")


class Cursors:
    """Issues and checks the signed cursors of every list."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, last_id: str, scope: str) -> bytes:
        message = f"{scope}\x1f{last_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def encode(self, last_id: str, *, scope: str) -> str:
        """The opaque cursor that continues after `last_id` in the list `scope`."""
        raw = last_id.encode() + self._mac(last_id, scope)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, cursor: str | None, *, scope: str) -> str | None:
        """The id a cursor of the list `scope` continues after; 422 for any other cursor."""
        if not cursor:
            return None
        if not _TOKEN.fullmatch(cursor):
            raise _invalid()
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise _invalid() from None
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise _invalid()  # another spelling of those bytes: not what the API issued
        last_id, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(raw) <= MAC_BYTES or not _ID.fullmatch(last_id.decode("latin-1")):
            raise _invalid()
        if not hmac.compare_digest(mac, self._mac(last_id.decode(), scope)):
            raise _invalid()
        return last_id.decode()

    def page(
        self, rows: Sequence[T], limit: int, last_id: Callable[[T], str], *, scope: str
    ) -> tuple[list[T], str | None]:
        """Cut `limit + 1` fetched rows into a page and the next page's cursor (None at the
        end)."""
        page = list(rows[:limit])
        more = len(rows) > limit
        return page, self.encode(last_id(page[-1]), scope=scope) if more else None


async def load_cursors(engine: AsyncEngine) -> Cursors:
    """The database's cursor signer: its key read, or created by the first process to start."""
    query = select(platform_state.c.value).where(platform_state.c.name == KEY_NAME)
    async with engine.begin() as conn:
        key = (await conn.execute(query)).scalar_one_or_none()
        if key is None:
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        platform_state.insert().values(
                            name=KEY_NAME, value=secrets.token_urlsafe(32)
                        )
                    )
            except IntegrityError:
                pass  # another process created it first: use theirs
            key = (await conn.execute(query)).scalar_one()
    return Cursors(str(key).encode())
