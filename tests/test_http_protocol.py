"""The HTTP protocol `pigeon serve` runs: uvicorn's, with each response written in one go."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx

from pigeon.http import _JoinedWrites
from tests.conftest import Server


class RecordingTransport:
    """The transport side of the boundary: what reaches the socket, in which writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


def test_writes_in_one_turn_of_the_loop_reach_the_socket_as_one() -> None:
    async def scenario() -> list[list[bytes]]:
        transport = RecordingTransport()
        joined = _JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        joined.write(b"{}")
        seen = [list(transport.writes)]  # nothing yet: the writes wait for the turn's end
        await asyncio.sleep(0)
        seen.append(list(transport.writes))
        joined.write(b"next")
        await asyncio.sleep(0)
        seen.append(list(transport.writes))
        return seen

    before, after_one, after_two = asyncio.run(scenario())
    assert before == []
    assert after_one == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert after_two == [*after_one, b"next"]


def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closing, aborting = RecordingTransport(), RecordingTransport()
        joined = _JoinedWrites(closing, loop)  # type: ignore[arg-type]
        joined.write(b"last words")
        assert not joined.is_closing()
        joined.close()
        assert joined.is_closing()  # uvicorn asks before it writes or arms a timer
        dropped = _JoinedWrites(aborting, loop)  # type: ignore[arg-type]
        dropped.write(b"never")
        dropped.abort()
        await asyncio.sleep(0)  # the scheduled flushes find nothing left to send
        return closing, aborting

    closing, aborting = asyncio.run(scenario())
    assert closing.writes == [b"last words"]
    assert closing.closed
    assert aborting.writes == []
    assert aborting.aborted


def test_the_rest_of_the_transport_is_the_real_one() -> None:
    async def scenario() -> tuple[Any, int]:
        transport = RecordingTransport()
        joined = _JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        joined.write(b"12345")
        return joined.get_extra_info("peername"), joined.get_write_buffer_size()

    peer, buffered = asyncio.run(scenario())
    assert peer == ("127.0.0.1", 5)
    assert buffered == 5  # what waits for the turn's end counts as buffered


def test_pipelined_requests_on_one_connection_get_complete_answers_in_order(
    server: Server,
) -> None:
    request = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 3 or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    for answer in answers:
        head, body = answer.split(b"\r\n\r\n", 1)
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        assert head.startswith(b"200 OK")
        assert len(body) == length


def test_a_large_response_arrives_whole(server: Server) -> None:
    # The OpenAPI document: tens of kilobytes, more than one socket buffer's worth at once.
    response = httpx.get(f"{server.base_url}/docs/openapi.json", timeout=10)
    assert response.status_code == 200
    assert len(response.content) == int(response.headers["content-length"])
    assert response.json()["info"]["title"] == "Pigeon"


def test_answers_do_not_name_the_server_software_and_ignore_forwarded_headers(
    server: Server, api: httpx.Client
) -> None:
    # Pigeon builds its own URLs from PIGEON_PUBLIC_URL and reads no client address, so a
    # client's X-Forwarded-* headers change nothing, and no `server` header tells a scanner
    # which software to probe.
    plain = httpx.get(f"{server.base_url}/health", timeout=10)
    forwarded = httpx.get(
        f"{server.base_url}/health",
        headers={"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"},
        timeout=10,
    )
    assert plain.status_code == forwarded.status_code == 200
    assert plain.json() == forwarded.json()
    assert "server" not in plain.headers
    assert "date" in plain.headers  # HTTP/1.1 still wants the date
    sent = api.post("/v1/apps/message/sms", json={"to": "38598123456", "content": {"text": "hi"}})
    assert sent.status_code == 200, sent.text
    assert "server" not in sent.headers
