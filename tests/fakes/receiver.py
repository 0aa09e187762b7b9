"""A tenant's webhook receiver: a real HTTP server on 127.0.0.1 that records every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return msgspec.json.decode(self.body)  # type: ignore[no-any-return]


# What to answer a request: (status, headers, body); the default is 200.
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Receiver:
    """Answers with `answer(request)`; every request is kept in `received`, in order."""

    answer: Callable[[Received], Answer] = lambda _: (200, {}, b"ok")
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                request = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                receiver.received.append(request)
                status, headers, body = receiver.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in list(self.received) if path is None or r.path == path]

    def wait_for(
        self, condition: Callable[[list[Received]], bool], timeout: float = 15
    ) -> list[Received]:
        """Wait until `condition(received)` holds; the requests so far (fails on timeout)."""
        deadline = time.monotonic() + timeout
        while not condition(list(self.received)):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver: condition not met in {timeout} s; got "
                    f"{[(r.path, r.event.get('type')) for r in self.received]}"
                )
            time.sleep(0.05)
        return list(self.received)
