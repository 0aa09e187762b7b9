"""Request bodies: what msgspec cannot decode is the client's malformed JSON (400), whatever
the reason, and what a route keeps as free-form JSON has a bounded depth.

msgspec raises DecodeError for bad syntax, but UnicodeDecodeError for invalid UTF-8 (a lone
`\\xff`, an overlong or surrogate encoding) and RecursionError for nesting deeper than the
interpreter's recursion limit (about 1,000 levels): both once went up as 500s. Litestar
decodes a route's body through the app's request class (`api.deps.PigeonRequest`); the send
fast path and the webhooks decode through `decode`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request
from msgspec import UnsetType

from pigeon.errors import BadRequest, field_error

T = TypeVar("T")
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
MAX_BODY_BYTES = 10_000_000  # a larger body is answered 413 payload_too_large
MAX_DEPTH = 32  # free-form JSON (`data`, a provider's payload) nests at most this deep


def malformed_detail(exc: BaseException, body: bytes = b"") -> str:
    """What is wrong with a body msgspec could not decode, for the 400's detail.

    msgspec's UnicodeDecodeError counts from the start of the string it was reading, not of
    the body: the offset named is the body's own first invalid byte.
    """
    if isinstance(exc, UnicodeDecodeError):
        start = exc.start
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as whole:
            start = whole.start
        return f"the request body is not valid UTF-8 (byte {start})"
    if isinstance(exc, RecursionError):
        return "the request body is not valid JSON: nested too deeply"
    return f"the request body is not valid JSON: {exc}"


def decode(body: bytes, type_: type[T]) -> T:
    """Decode a body into `type_`; 400 malformed_json when it is not JSON (validation errors
    of well-formed JSON are msgspec.ValidationError, left to the caller)."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError:
        raise
    except UNDECODABLE as exc:
        raise BadRequest(malformed_detail(exc, body), code="malformed_json") from None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a decoded JSON value nests deeper than `limit` containers (walked without
    recursion, stopping at the first container past the limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_data(request: Request[Any, Any, Any], data: dict[str, Any] | UnsetType) -> None:
    """A User's or Identity's free-form `data` (if given): at most MAX_DEPTH deep and
    PIGEON_MAX_DATA_BYTES of JSON (422 data_too_deep / data_too_large)."""
    if not isinstance(data, UnsetType):
        settings = request.app.state.services.settings
        checked_data(data, max_bytes=settings.max_data_bytes)


def checked_data(data: dict[str, Any], *, max_bytes: int, field: str = "data") -> None:
    """Free-form JSON: at most MAX_DEPTH deep and `max_bytes` of JSON."""
    deep = field_error(field, f"must nest at most {MAX_DEPTH} levels deep", code="data_too_deep")
    try:
        size = len(msgspec.json.encode(data))
    except RecursionError:
        raise deep from None
    if size > max_bytes:
        raise field_error(
            field,
            f"must be at most {max_bytes} bytes as JSON (it is {size})",
            code="data_too_large",
        )
    if too_deep(data):  # walked once its size is known to be small
        raise deep
