"""Identifiers: object ids like the docs' (24 hex), numeric message ids, secret tokens."""

from __future__ import annotations

import itertools
import os
import random
import re
import secrets
import time

_PROCESS = os.urandom(5).hex()
_COUNTER = itertools.count(secrets.randbelow(1 << 23))
# Message ids need uniqueness, not secrecy: a PRNG seeded from the OS, without a system call
# per id.
_RANDOM = random.Random(os.urandom(16))
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def new_object_id() -> str:
    """A 24-character lowercase hex id laid out like a MongoDB ObjectId.

    Seconds, a per-process random part and a counter: ids made by one process sort in creation
    order, and two processes never collide.
    """
    return f"{int(time.time()):08x}{_PROCESS}{next(_COUNTER) % (1 << 24):06x}"


def new_message_id() -> str:
    """A 22-digit numeric message id that sorts by creation time."""
    return f"{time.time_ns() // 1000:016d}{_RANDOM.randrange(10**6):06d}"


def new_token(nbytes: int = 32) -> str:
    """An unguessable URL-safe secret."""
    return secrets.token_urlsafe(nbytes)


def is_object_id(value: str) -> bool:
    """True when value has the shape of a Pigeon object id."""
    return _OBJECT_ID.fullmatch(value) is not None
