"""The webhook attempts' HTTP client: kept-alive connections, and the guard before every attempt.

A real HTTP/1.1 server on 127.0.0.1 answers; the resolver is the one piece replaced, to play
a name that resolves to a public address and then (DNS rebinding) to a refused one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from pigeon.dispatch import webhook_http
from pigeon.dispatch.webhook_http import AttemptError, WebhookClient
from pigeon.netguard import UrlNotAllowed


class Server:
    """Answers each request with `answer` (raw bytes) and counts connections and requests."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()


@asynccontextmanager
async def serving(answer: bytes) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def resolver(answers: list[Any]) -> Callable[..., Any]:
    """A stand-in for netguard.resolve_allowed: each call takes the next answer."""

    async def resolve(host: str, port: int, **_: Any) -> list[str]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    return resolve


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def test_attempts_reuse_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        async with serving(NO_CONTENT) as server:
            client = WebhookClient(allow_private=True, user_agent="test")
            url = f"http://127.0.0.1:{server.port}/hook?token=t"
            for n in range(5):
                answer = await client.post(url, b'{"n": %d}' % n, {"webhook-id": f"evt_{n}"})
                assert answer.status == 204
            await client.aclose()
        assert server.connections == 1
        assert len(server.requests) == 5
        first = server.requests[0].decode()
        assert first.startswith("POST /hook?token=t HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n" in first
        assert "webhook-id: evt_0\r\n" in first
        assert first.endswith('\r\n\r\n{"n": 0}')

    asyncio.run(run())


def test_every_attempt_is_checked_again_on_a_kept_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The name resolved to an allowed address, then to a refused one (DNS rebinding): the
    # connection kept alive to the first carries no request.
    monkeypatch.setattr(webhook_http, "DNS_TTL", 0.0)
    refusal = UrlNotAllowed("url", "host hooks.test resolves to a loopback address (127.0.0.1)")

    async def run() -> None:
        async with serving(NO_CONTENT) as server:
            answers: list[Any] = [["127.0.0.1"], refusal]
            monkeypatch.setattr(webhook_http, "resolve_allowed", resolver(answers))
            client = WebhookClient(allow_private=True, user_agent="test")
            # The Host header names the URL's host; the connection goes to the checked address.
            url = f"http://localhost:{server.port}/hook"
            assert (await client.post(url, b"{}", {})).status == 204
            with pytest.raises(UrlNotAllowed):
                await client.post(url, b"{}", {})
            await client.aclose()
        assert len(server.requests) == 1

    asyncio.run(run())


def test_a_connection_to_an_address_no_longer_resolved_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_http, "DNS_TTL", 0.0)

    async def run() -> None:
        async with serving(NO_CONTENT) as server:
            # Both are this server (127.0.0.1 and 127.0.0.2 are loopback alike).
            answers: list[Any] = [["127.0.0.1"], ["127.0.0.2"]]
            monkeypatch.setattr(webhook_http, "resolve_allowed", resolver(answers))
            client = WebhookClient(allow_private=True, user_agent="test")
            url = f"http://hooks.test:{server.port}/"
            assert (await client.post(url, b"{}", {})).status == 204
            with pytest.raises(AttemptError):  # nothing listens on 127.0.0.2 here
                await client.post(url, b"{}", {})
            await client.aclose()
        assert server.connections == 1

    asyncio.run(run())


CHUNKED = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n"
INTERIM = b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
        (CHUNKED, 500, b"bad"),
        (INTERIM, 201, b""),
        (b"HTTP/1.1 429 Slow\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", 429, b""),
    ],
)
def test_answers_are_read_as_sent(answer: bytes, status: int, body: bytes) -> None:
    async def run() -> None:
        async with serving(answer) as server:
            client = WebhookClient(allow_private=True, user_agent="test")
            got = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
            await client.aclose()
        assert (got.status, got.body) == (status, body)
        if status == 429:
            assert got.retry_after == "7"

    asyncio.run(run())


def test_an_answer_that_is_not_http_is_an_attempt_error() -> None:
    async def run() -> None:
        async with serving(b"SSH-2.0-OpenSSH_9.6\r\n") as server:
            client = WebhookClient(allow_private=True, user_agent="test")
            with pytest.raises(AttemptError, match="invalid HTTP answer"):
                await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
            await client.aclose()

    asyncio.run(run())


def test_a_connection_closed_before_answering_is_an_attempt_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def run() -> None:
        listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = WebhookClient(allow_private=True, user_agent="test")
        with pytest.raises(AttemptError, match="closed the connection before answering"):
            await client.post(f"http://127.0.0.1:{port}/", b"{}", {})
        listener.close()
        # Nothing listens any more: connecting fails.
        with pytest.raises(AttemptError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{port}/", b"{}", {})
        await client.aclose()

    asyncio.run(run())
