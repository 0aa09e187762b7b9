"""Cursor pagination: the cursor is an opaque token wrapping the last id of a page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TypeVar

from pigeon.errors import field_error

T = TypeVar("T")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(last_id: str) -> str:
    """The opaque cursor that continues after `last_id`."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The id a cursor continues after; a 422 for a cursor we did not issue."""
    if not cursor:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise field_error("cursor", "not a cursor this API issued", code="invalid_cursor") from None
    if not value.isascii() or not value.isalnum():
        raise field_error("cursor", "not a cursor this API issued", code="invalid_cursor")
    return value


def split_page(
    rows: Sequence[T], limit: int, last_id: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """Cut `limit + 1` fetched rows into a page and the next page's cursor (None at the end)."""
    page = list(rows[:limit])
    return page, encode_cursor(last_id(page[-1])) if len(rows) > limit else None
