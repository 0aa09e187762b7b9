"""uvicorn's httptools protocol, with each response written to the socket in one go, and
bounds on what a client may hold: the size of a request's headers, and its time.

uvicorn writes a response's status line and headers, then its body: two `send` system calls
and two TCP segments for every small JSON answer, and on loopback each one costs the sender
the receiver's network stack too. Here a connection's writes made in the same turn of the
event loop are joined and written once, at the start of the next turn (before the loop waits
for I/O again): one system call and one segment per response.

The httptools parser has no limit of its own on headers (uvicorn's
`h11_max_incomplete_event_size` applies to its h11 protocol only) and no read timeout (uvicorn
arms its keep-alive timeout only after a response): a client could send headers without end,
or half a request and then nothing, and hold the connection and its memory forever. Here a
request's headers past MAX_HEADER_BYTES are answered 431 and the connection closed, and a
request must have arrived whole (headers and body) within the timeout
(PIGEON_HTTP_TIMEOUT_SECONDS, uvicorn's `timeout_keep_alive`, which also closes idle
connections); a slower one is answered 408, or just closed once the app is reading it.

Nothing else changes: parsing, flow control, keep-alive and shutdown are uvicorn's own.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pigeon.api.problems import PROBLEM_JSON, problem_body

MAX_HEADER_BYTES = 16 * 1024  # a request's line and headers, in all


class _JoinedWrites:
    """A transport whose writes in one turn of the loop reach the socket as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    # uvicorn asks after every response: a method of its own, not a trip through
    # `__getattr__` (which runs only after the normal lookup has failed with AttributeError).
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # what was written before close() still goes out
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _refusal(status: int, code: str, detail: str) -> bytes:
    """A whole problem-details response that closes the connection."""
    body = problem_body(status, code, detail)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's `httptools` protocol; a response leaves in one write, headers are bounded,
    and a request must arrive within the timeout (see the module)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = _JoinedWrites(transport, self.loop)
        super().connection_made(joined)  # type: ignore[arg-type]
        self._in_headers = True  # reading a request's line and headers (or waiting for one)
        self._header_bytes = 0  # of the request's line and headers parsed so far
        self._unparsed = 0  # bytes received while in its headers
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.timeout_keep_alive, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_headers:
            self._unparsed += len(data)
        super().data_received(data)
        if self._in_headers and self._unparsed > MAX_HEADER_BYTES and not self._refused:
            self._refuse_headers()  # one endless header line, still unparsed

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url) + 16)  # with the method and HTTP version
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # with ": " and CRLF
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES and not self._refused:
            self._refuse_headers()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        # The request has arrived whole; the app's time to answer is not bounded here.
        self._disarm()
        self._in_headers, self._header_bytes, self._unparsed = True, 0, 0

    def _refuse_headers(self) -> None:
        self._refused = True
        detail = f"the request's line and headers exceed {MAX_HEADER_BYTES} bytes"
        self.transport.write(_refusal(431, "headers_too_large", detail))
        self.transport.close()

    def _too_slow(self) -> None:
        """The request did not arrive whole in time: 408 if the app has not seen it yet."""
        self._deadline = None
        if self.transport.is_closing():
            return
        self._refused = True
        if self._in_headers and self._unparsed:
            detail = f"the request did not arrive within {self.timeout_keep_alive} seconds"
            self.transport.write(_refusal(408, "request_timeout", detail))
        self.transport.close()
