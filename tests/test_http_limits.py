"""What a client may hold on `pigeon serve`'s HTTP stack: headers are bounded (431), and a
connection that is idle, or a request that is only half sent, is closed after
PIGEON_HTTP_TIMEOUT_SECONDS. Raw sockets, since a well-behaved client cannot misbehave."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from pigeon.http import MAX_HEADER_BYTES
from tests.conftest import DEMO_ID, DEMO_KEY, Server, make_server

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(
        tmp_path_factory.mktemp("http-limits"), PIGEON_HTTP_TIMEOUT_SECONDS=str(TIMEOUT)
    )
    server.start()
    yield server
    server.stop()


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.settimeout(15)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def _problem(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-big": "a" * (MAX_HEADER_BYTES + 10)},
        {f"x-many-{i}": "b" * 100 for i in range(200)},
    ],
    ids=["one large header", "many headers"],
)
def test_headers_past_16_kib_are_431(served: Server, headers: dict[str, str]) -> None:
    with served.client(DEMO_KEY) as client:
        for method, path in (("GET", "/health"), ("POST", f"/v1/users/{DEMO_ID}/message/sms")):
            answer = client.request(method, path, headers=headers, json={"content": {"text": "x"}})
            assert answer.status_code == 431, answer.text
            assert answer.json()["code"] == "headers_too_large"
            assert answer.headers["connection"] == "close"


def test_headers_within_the_limit_are_served(served: Server) -> None:
    headers = {f"x-fits-{i}": "c" * 100 for i in range(100)}  # about 11 KiB
    with served.client(DEMO_KEY) as client:
        assert client.get("/health", headers=headers).status_code == 200


def test_an_endless_header_line_is_refused_while_it_streams(served: Server) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-endless: ")
        try:
            for _ in range(64):  # 1 MiB, never a line end
                sock.sendall(b"d" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending: what we want
        try:
            response, _ = _read_until_closed(sock)
        except ConnectionResetError:
            return
    status, problem = _problem(response)
    assert status == 431
    assert problem["code"] == "headers_too_large"


def test_half_sent_headers_are_answered_408_and_closed(served: Server) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
        response, elapsed = _read_until_closed(sock)
    status, problem = _problem(response)
    assert status == 408
    assert problem["code"] == "request_timeout"
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 5


def test_a_half_sent_body_is_closed(served: Server) -> None:
    with _connect(served) as sock:
        sock.sendall(
            f"POST /v1/users/{DEMO_ID}/message/sms HTTP/1.1\r\nhost: x\r\n"
            f"x-api-key: {DEMO_KEY}\r\ncontent-type: application/json\r\n"
            "content-length: 100\r\n\r\n".encode()
            + b'{"content": '
        )
        _, elapsed = _read_until_closed(sock)
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 5


def test_idle_connections_are_closed(served: Server) -> None:
    with _connect(served) as sock:  # never sends a byte
        received, elapsed = _read_until_closed(sock)
    assert received == b""
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 5
    with _connect(served) as sock:  # one request, then idle on keep-alive
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        received, elapsed = _read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert elapsed < TIMEOUT + 5


def test_a_slow_request_within_the_timeout_is_served(served: Server) -> None:
    with _connect(served) as sock:
        for piece in (b"GET /health HTTP/1.1\r\n", b"host: x\r\n", b"connection: close\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(TIMEOUT / 5)
        received, _ = _read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    with httpx.Client(base_url=served.base_url) as client:
        assert client.get("/health").status_code == 200
