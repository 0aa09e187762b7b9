"""Cursor pagination: the cursor is an opaque token wrapping the last id of a page."""

from __future__ import annotations

import base64
import binascii

from pigeon.errors import field_error

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


def next_cursor(ids: list[str], limit: int) -> str | None:
    """The cursor for the next page, or None when this page was the last."""
    return encode_cursor(ids[-1]) if len(ids) == limit and ids else None
