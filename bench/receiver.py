"""A tenant's webhook receiver for the events row: answers every POST with 204, at once.

It stands in for a tenant's server, which runs on another machine in a real deployment, so it
is kept as cheap as HTTP/1.1 allows: an asyncio protocol on uvloop with httptools' parser
(what uvicorn itself parses with), without an ASGI framework between. Each request is read
whole (headers and body) before it is answered; connections are kept alive unless the client
asks otherwise. `python -m bench.receiver PORT` serves on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import uvloop

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None  # uvloop's TCP transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_complete(self) -> None:
        post = self.parser.get_method() == b"POST"
        self.transport.write(NO_CONTENT if post else OK)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
