"""uvicorn's WebSocket protocol, able to close a connection whose client stopped reading.

uvicorn's `send` waits, before every message, for the transport's buffer to drain below its
mark: the close too. A stream client that stopped reading (its queue full, see
`api.stream`) would never be sent the 1008 it is closed with; its connection was only cut off
later, without a close frame, and the client could not tell why. Here a close goes out at
once, behind what is buffered: the client, reading again, gets everything sent before it,
then the close frame. One that still does not read is cut off after CLOSE_DRAIN_SECONDS, so
it holds the server's memory no longer.

Nothing else changes: framing, keepalive pings and shutdown are uvicorn's own.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

CLOSE_DRAIN_SECONDS = 30.0


class StreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol; a close is never held back (see the module)."""

    async def send(self, message: Any) -> None:
        stalled = message["type"] == "websocket.close" and not self.writable.is_set()
        if stalled:
            self.writable.set()  # only for the close: nothing may be sent after it
        await super().send(message)
        if stalled and self.close_timer is not None:
            # uvicorn's timer would close the transport gracefully, which waits for the
            # buffer to drain: for a client that does not read, never.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(CLOSE_DRAIN_SECONDS, self.transport.abort)
