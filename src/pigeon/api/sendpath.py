"""The send routes' fast path: a well-formed send skips Litestar's per-request machinery.

Sending is the hot path: every other route costs what Litestar costs, but a send should cost
little more than parsing its body and waiting for its group commit. This ASGI wrapper sits in
front of the Litestar app and answers `POST` to the nine send routes itself when the request is
well formed: the API key is known, the body decodes into the route's msgspec struct, and its
content passes the rules. Anything else (a bad key, a bad body, a trailing slash, a huge body)
goes to Litestar with the body replayed, so every error is the one the Litestar route gives,
in the same format, and the routes stay documented in the OpenAPI schema.

Both paths build the same SendRequest (`send_request`, `scope_send`) and submit it to the same
pipeline; this module only skips the framework around them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import structlog
from sqlalchemy.exc import SQLAlchemyError

from pigeon import metrics
from pigeon.api.body import UNDECODABLE
from pigeon.api.deps import Services, api_key_from
from pigeon.api.messages import SEND_BODIES, scope_send, send_request
from pigeon.api.problems import PROBLEM_JSON, UNEXPECTED, problem_body
from pigeon.db.errors import unavailable_reason
from pigeon.errors import PigeonError
from pigeon.messages.schemas import Channel
from pigeon.nul import might_hold_nul

log = structlog.get_logger("pigeon.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

FAST_BODY_LIMIT = 1 << 20  # larger bodies (long emails) take Litestar's path
_ROUTE = re.compile(
    r"/v1/(?:users/(?P<user>[^/]+)/message"
    r"|identities/(?P<person>[^/]+)/person/message"
    r"|apps/message)"
    r"/(?P<channel>sms|whatsapp|email)"
)
# The Litestar routes' templates, which the fast path's requests are counted under.
_TEMPLATES = {
    (kind, channel): f"/v1/{prefix}/{channel}"
    for kind, prefix in (
        ("user", "users/{user_id}/message"),
        ("person", "identities/{identity_id}/person/message"),
        ("app", "apps/message"),
    )
    for channel in ("sms", "whatsapp", "email")
}
_DECODERS: dict[tuple[str, str], msgspec.json.Decoder[Any]] = {
    (kind, channel): msgspec.json.Decoder(body) for (kind, channel), body in SEND_BODIES.items()
}
_READ = {name.encode(): name for name in ("x-api-key", "authorization", "idempotency-key")}
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


class SendFastPath:
    """ASGI middleware: well-formed sends are answered here, everything else by `app`."""

    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self._services = services
        self._current: Services | None = None  # the lifespan's services, once looked up

    def services(self) -> Services:
        if self._current is None:
            self._current = self._services()
        return self._current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            if scope["type"] == "lifespan":
                self._current = None  # a new lifespan builds new services
            return await self.app(scope, receive, send)
        match = _ROUTE.fullmatch(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        body, complete = await _read_body(receive)
        item = await self._prepare(scope, match, body) if complete else None
        if item is None:
            return await self.app(scope, _replaying(body, complete, receive), send)
        route = _TEMPLATES[item.recipient_type, item.channel]
        try:
            result = await self.services().accept.submit(item)
        except PigeonError as exc:
            metrics.count_request("POST", route, exc.status, time.perf_counter() - started)
            return await _send_problem(send, scope["path"], exc)
        except Exception:
            log.exception("unhandled error", path=scope["path"], method="POST")
            error = PigeonError(UNEXPECTED, code="internal_error", status=500)
            metrics.count_request("POST", route, 500, time.perf_counter() - started)
            return await _send_problem(send, scope["path"], error)
        headers = [_JSON, (b"content-length", str(len(result.body)).encode())]
        if result.replayed:
            headers.append(_REPLAYED)
        await send(
            {"type": "http.response.start", "status": result.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": result.body})
        metrics.count_request("POST", route, result.status_code, time.perf_counter() - started)

    async def _prepare(self, scope: Scope, match: re.Match[str], body: bytes) -> Any:
        """The request as a SendRequest, or None when Litestar should answer it."""
        headers: dict[str, str] = {}
        for raw, value in scope["headers"]:
            # The headers the route reads; the first of a repeated one, as Litestar's get().
            name = _READ.get(raw)
            if name is not None and name not in headers:
                headers[name] = value.decode("latin-1")
        key = api_key_from(headers)
        if not key or might_hold_nul(body):
            return None
        svc = self.services()
        account_id = svc.auth.cached(key)
        try:
            if account_id is None:
                account_id = await svc.auth.authenticate(key)
            user, person = match["user"], match["person"]
            kind = "user" if user else "person" if person else "app"
            channel: Channel = match["channel"]  # type: ignore[assignment]
            data = _DECODERS[kind, channel].decode(body)
            item = send_request(kind, channel, account_id, user or person, data)
            scope_send(item, "POST", scope["path"], headers.get("idempotency-key"), body)
        except (PigeonError, *UNDECODABLE, SQLAlchemyError):
            return None  # Litestar's route answers it, with the error it documents
        except Exception as exc:
            if unavailable_reason(exc) is None:
                raise
            return None  # the database cannot serve: Litestar's route answers it (503)
        return item


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, and whether it is complete (False past the limit or on disconnect)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks), True
        if size > FAST_BODY_LIMIT:
            return b"".join(chunks), False


def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A receive that gives back the body read so far, then carries on with the real one."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": not complete}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _send_problem(send: Send, path: str, exc: PigeonError) -> None:
    body = problem_body(exc.status, exc.code, exc.detail, instance=path, errors=exc.errors)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
