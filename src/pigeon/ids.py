"""Identifiers: object ids like the docs' (24 hex), numeric message ids, secret tokens."""

from __future__ import annotations

import os
import secrets
import time


def new_object_id() -> str:
    """A 24-character lowercase hex id, time-prefixed like a MongoDB ObjectId."""
    return f"{int(time.time()):08x}{os.urandom(8).hex()}"


def new_message_id() -> str:
    """A 22-digit numeric message id that sorts by creation time."""
    return f"{time.time_ns() // 1000:016d}{secrets.randbelow(10**6):06d}"


def new_token(nbytes: int = 32) -> str:
    """An unguessable URL-safe secret."""
    return secrets.token_urlsafe(nbytes)


def is_object_id(value: str) -> bool:
    """True when value has the shape of a Pigeon object id."""
    return len(value) == 24 and all(c in "0123456789abcdef" for c in value)
