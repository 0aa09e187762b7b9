"""Identifiers: object ids like the docs' (24 hex), numeric message ids, secret tokens."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time

_PROCESS = os.urandom(5).hex()
_COUNTER = itertools.count(secrets.randbelow(1 << 23))
# A message id's last six digits: a per-process count, modulo a million, from a random start
# below 500,000. Ids one process makes in the same microsecond differ and sort in the order
# they were made (unless the count wraps within that microsecond, at most once per 500,000
# ids); two processes collide only if both make an id in the same microsecond with the same
# count. A random suffix (as before) cost more and sorted ids of one microsecond at random.
_MESSAGE_SEQUENCE = itertools.count(secrets.randbelow(500_000))
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def new_object_id() -> str:
    """A 24-character lowercase hex id laid out like a MongoDB ObjectId.

    Seconds, a per-process random part and a counter: ids made by one process sort in creation
    order, and two processes never collide.
    """
    return f"{int(time.time()):08x}{_PROCESS}{next(_COUNTER) % (1 << 24):06x}"


def new_message_id() -> str:
    """A 22-digit numeric message id that sorts by creation time: microseconds since the
    epoch, then the process's count (see `_MESSAGE_SEQUENCE`)."""
    # Sixteen digits of microseconds from 2001 to 2286: no padding needed.
    return str(time.time_ns() // 1000 * 1_000_000 + next(_MESSAGE_SEQUENCE) % 1_000_000)


def new_token(nbytes: int = 32) -> str:
    """An unguessable URL-safe secret."""
    return secrets.token_urlsafe(nbytes)


def is_object_id(value: str) -> bool:
    """True when value has the shape of a Pigeon object id."""
    return _OBJECT_ID.fullmatch(value) is not None
