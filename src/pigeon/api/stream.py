"""GET /v1/stream: Orangepill's WebSocket event stream.

The client authenticates with `x-api-key` on the handshake, or by sending
`{"type": "subscribe", "realm": "<API key>"}` first; it is answered
`{"type": "subscribe", "realm": "<account id>", "timestamp": "<epoch ms>"}`, then each of its
tenant's events arrives as `{"type": "notification", "event", "data": "<messageId>",
"timestamp"}`. A bad key is answered `{"type": "error", "realm": "Invalid Realm Key.", ...}`
and the connection is closed with 1008, as is a client too slow to take its notifications.
A first message that is not a subscribe (not JSON, not UTF-8, nested past the decoder, larger
than a subscribe can be) is a missing key; while the database cannot serve, the connection is
closed with 1013 (try again later) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from pigeon.api.body import UNDECODABLE
from pigeon.api.deps import api_key_from
from pigeon.db.errors import unavailable
from pigeon.errors import PigeonError
from pigeon.events.stream import StreamHub, Subscriber

log = structlog.get_logger("pigeon.stream")

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
MAX_SUBSCRIBE_CHARACTERS = 4096  # a subscribe holds an API key and two short fields
SUBSCRIBE_WITHIN = 10.0
INVALID_REALM = "Invalid Realm Key."


def _now_ms() -> str:
    return str(int(time.time() * 1000))


async def _key(socket: WebSocket[Any, Any, Any]) -> str | None:
    """The handshake's key, or the realm of the first message if it is a subscribe."""
    key = api_key_from(socket.headers)
    if key:
        return key
    try:
        async with asyncio.timeout(SUBSCRIBE_WITHIN):
            text = await socket.receive_data("text")
    except (TimeoutError, WebSocketDisconnect):
        return None
    if len(text) > MAX_SUBSCRIBE_CHARACTERS:
        return None
    try:
        first = msgspec.json.decode(text)
    except UNDECODABLE:
        return None
    if isinstance(first, dict) and first.get("type") == "subscribe":
        realm = first.get("realm")
        return realm if isinstance(realm, str) and realm else None
    return None


async def _refuse(socket: WebSocket[Any, Any, Any]) -> None:
    error = {"type": "error", "realm": INVALID_REALM, "timestamp": _now_ms()}
    await socket.send_text(msgspec.json.encode(error).decode())
    await socket.close(code=POLICY_VIOLATION, reason=INVALID_REALM)


async def _forward(socket: WebSocket[Any, Any, Any], subscriber: Subscriber) -> None:
    while True:
        message = await subscriber.queue.get()
        await socket.send_text(message.decode())


async def _drain_client(socket: WebSocket[Any, Any, Any]) -> None:
    """Read (and ignore) what the client sends, until it goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await socket.receive_data("text")


@websocket("/v1/stream")
async def stream(socket: WebSocket[Any, Any, Any]) -> None:
    """The tenant's events, live."""
    await socket.accept()
    services = socket.app.state.services
    key = await _key(socket)
    try:
        account_id = await services.auth.authenticate(key)
    except Exception as exc:
        if unavailable(exc) is not None:  # logged once an incident
            await socket.close(code=TRY_AGAIN_LATER, reason="database unavailable; retry later")
        elif isinstance(exc, PigeonError):
            await _refuse(socket)
        else:
            raise
        return
    hub: StreamHub = services.stream
    subscriber = hub.subscribe(account_id)
    try:
        answer = {"type": "subscribe", "realm": account_id, "timestamp": _now_ms()}
        await socket.send_text(msgspec.json.encode(answer).decode())
        tasks = [
            asyncio.ensure_future(_forward(socket, subscriber)),
            asyncio.ensure_future(_drain_client(socket)),
            asyncio.ensure_future(subscriber.overflowed.wait()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        if subscriber.overflowed.is_set():
            log.warning("stream client too slow: disconnected", account=account_id)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await socket.close(code=POLICY_VIOLATION, reason="too slow: queue full")
    finally:
        hub.unsubscribe(subscriber)
