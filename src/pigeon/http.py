"""uvicorn's httptools protocol, with each response written to the socket in one go.

uvicorn writes a response's status line and headers, then its body: two `send` system calls
and two TCP segments for every small JSON answer, and on loopback each one costs the sender
the receiver's network stack too. Here a connection's writes made in the same turn of the
event loop are joined and written once, at the start of the next turn (before the loop waits
for I/O again): one system call and one segment per response.

Nothing else changes: parsing, flow control, keep-alive and shutdown are uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's `httptools` protocol; a response leaves in one write (see the module)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = _JoinedWrites(transport, self.loop)
        super().connection_made(joined)  # type: ignore[arg-type]
