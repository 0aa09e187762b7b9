"""NUL characters are refused at the door: PostgreSQL can store none, in text or in JSON.

A JSON body can carry one only as the escape `\\u0000` (a raw control character is invalid
JSON), so a body without those six bytes is clean, which `memchr` tells at once; only a body
with them is decoded and walked, to name the field in the 422. SQLite could store them, but
one rule on both engines keeps a tenant's data portable, and a send in a PostgreSQL batch
must not fail the batch's other sends.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from pigeon.errors import Unprocessable, field_error

NUL_MESSAGE = "must not contain NUL characters (\\u0000)"
NO_NUL_PATTERN = "^[^\\x00]*$"  # for a parameter whose text reaches the database
# `\u0000` preceded by an even run of backslashes (`\\u0000` is the text "\u0000").
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def might_hold_nul(body: bytes) -> bool:
    """False when the JSON body certainly holds no NUL character (the cheap first look)."""
    return b"\\u0000" in body and _ESCAPED_NUL.search(body) is not None


def nul_error(body: bytes) -> Unprocessable | None:
    """A 422 naming the first field of a JSON body whose text holds a NUL character."""
    if not might_hold_nul(body):
        return None
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None  # the route answers the malformed body itself (400)
    field = _field_holding_nul(value)
    return None if field is None else field_error(field or "body", NUL_MESSAGE)


def _field_holding_nul(value: Any) -> str | None:
    """The path (`content.text`, `results[0].from`) of the first string holding a NUL."""
    pending: list[tuple[str, Any]] = [("", value)]  # a stack: nesting depth is not recursion
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            children = [
                (f"{path}.{key}" if path else str(key), child) for key, child in item.items()
            ]
            for (child_path, _), key in zip(children, item, strict=True):
                if "\x00" in key:
                    return child_path
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None
