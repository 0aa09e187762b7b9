"""The webhook attempts' HTTP/1.1 client: kept-alive connections, every attempt guarded.

A webhook attempt is always the same request: one POST of a small JSON body, whose answer
matters only by its status, its Retry-After and its first characters, with no redirect
followed. httpx spent 1.5-3 ms of CPU on each (3,000 POSTs to a local receiver, 8 and 64 in
flight), more than everything else a delivery costs together, where an endpoint taking every
event of a busy tenant needs thousands a second. So attempts are written here and their
answers read by httptools (uvicorn's parser), on connections kept alive per origin.

Every attempt goes through the netguard, not only every connection: the URL's shape is
checked, the host is resolved (answers kept DNS_TTL seconds) and refused if an address is
not public, and a kept-alive connection is used only while the address it is connected to is
still one of the host's allowed addresses. A name rebound to 127.0.0.1 gets no request, on a
new connection or an old one.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httptools
import httpx

from pigeon.netguard import UrlNotAllowed, check_request_url, resolve_allowed

DNS_TTL = 5.0  # seconds an answer (or a refusal) of the resolver is used
KEEPALIVE_EXPIRY = 4.0  # under the 5 s many servers (uvicorn's default) keep an idle connection
MAX_IDLE_PER_ORIGIN = 64
READ_LIMIT = 64 * 1024  # of an answer's body; past it the connection is dropped
FIELD = "url"


class AttemptError(Exception):
    """A network failure of an attempt, in words for its log."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA), without brackets
    port: int
    head: bytes  # the request line and Host header

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@functools.lru_cache(maxsize=4096)
def _target(url: str, allow_private: bool) -> _Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlNotAllowed(FIELD, f"is not a valid URL ({exc})") from None
    check_request_url(parsed, allow_private=allow_private, field=FIELD)
    host = parsed.raw_host.decode("ascii")
    default = 443 if parsed.scheme == "https" else 80
    port = parsed.port or default
    named = f"[{host}]" if ":" in host else host
    if port != default:
        named = f"{named}:{port}"
    path = parsed.raw_path.decode("ascii") or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {named}\r\n".encode("ascii")
    return _Target(parsed.scheme, host, port, head)


class _Connection(asyncio.Protocol):
    """One kept-alive connection: a request at a time, its answer parsed as it arrives."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.retry_after: str | None = None
        self.body = bytearray()
        self.received = False  # any byte of this answer
        self.reusable = False
        self.failure: AttemptError | None = None
        self._done = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: an idle connection the server talks on
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the endpoint switched protocols")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP answer ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._done:
            if self.status >= 200:  # an answer whose end is the end of the connection
                self._finish(reusable=False)
            else:
                reason = f": {exc}" if exc else ""
                self._fail(f"the endpoint closed the connection before answering{reason}")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) >= READ_LIMIT:
            self._finish(reusable=False)  # enough read; the rest is not waited for

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.status, self.retry_after, self.body = 0, None, bytearray()
            return
        self._finish(reusable=self._parser.should_keep_alive())

    def _finish(self, *, reusable: bool) -> None:
        if not self._done:
            self._done = True
            self.reusable = reusable and not self.closed
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def _fail(self, message: str) -> None:
        if not self._done:
            self.failure = AttemptError(message)
            self._finish(reusable=False)
        self.close()

    async def exchange(self, request: bytes) -> Answer:
        """Send one request and wait for its answer."""
        assert self.transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            await self._waiter
        finally:
            self._waiter = None
        if self.failure is not None:
            raise self.failure
        return Answer(self.status, self.retry_after, bytes(self.body))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WebhookClient:
    """POSTs to tenants' URLs through the netguard, on connections kept alive per origin."""

    def __init__(
        self,
        *,
        allow_private: bool,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._agent = f"User-Agent: {user_agent}\r\n".encode("ascii")
        self._ssl = ssl_context or httpx.create_ssl_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[str] | UrlNotAllowed]] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST `body`; the answer, or UrlNotAllowed / AttemptError (the caller bounds the time).

        A kept-alive connection the server closed under the request before any byte of an
        answer is given up for a new one, once (the receiver may see the event twice, as
        at-least-once delivery allows; `webhook-id` is the same).
        """
        target = _target(url, self.allow_private)
        addresses = await self._allowed(target.host, target.port)
        request = self._request(target, body, headers)
        connection = self._reuse(target, addresses)
        if connection is not None:
            try:
                return self._keep(target, connection, await connection.exchange(request))
            except AttemptError:
                connection.close()
                if connection.received:
                    raise
            except BaseException:
                connection.close()
                raise
        connection = await self._connect(target, addresses)
        try:
            return self._keep(target, connection, await connection.exchange(request))
        except BaseException:
            connection.close()
            raise

    def _request(self, target: _Target, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [target.head, self._agent, b"Content-Length: %d\r\n" % len(body)]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise AttemptError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines += (b"\r\n", body)
        return b"".join(lines)

    async def _allowed(self, host: str, port: int) -> list[str]:
        """The host's addresses, all allowed, from an answer at most DNS_TTL seconds old."""
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is None or cached[0] <= now:
            try:
                found: list[str] | UrlNotAllowed = await resolve_allowed(
                    host, port, field=FIELD, allow_private=self.allow_private
                )
            except UrlNotAllowed as exc:
                found = exc
            except OSError as exc:
                raise AttemptError(f"cannot resolve {host}: {exc}") from None
            if len(self._dns) > 10_000:
                self._dns.clear()
            cached = self._dns[(host, port)] = (now + DNS_TTL, found)
        if isinstance(cached[1], UrlNotAllowed):
            raise cached[1]
        if not cached[1]:
            raise AttemptError(f"{host} resolves to no address")
        return cached[1]

    def _reuse(self, target: _Target, addresses: list[str]) -> _Connection | None:
        idle = self._idle.get(target.origin)
        expired = time.monotonic() - KEEPALIVE_EXPIRY
        while idle:
            connection = idle.pop()
            fresh = not connection.closed and connection.idle_since > expired
            if fresh and connection.address in addresses:
                return connection
            connection.close()
        return None

    def _keep(self, target: _Target, connection: _Connection, answer: Answer) -> Answer:
        if connection.reusable and not connection.closed:
            idle = self._idle.setdefault(target.origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                connection.idle_since = time.monotonic()
                idle.append(connection)
                return answer
        connection.close()
        return answer

    async def _connect(self, target: _Target, addresses: list[str]) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = target.scheme == "https"
        failure = "no address"
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    functools.partial(_Connection, address),
                    address,
                    target.port,
                    ssl=self._ssl if tls else None,
                    # TLS verifies and names (SNI) the host, not the address connected to.
                    server_hostname=target.host if tls else None,
                )
                return connection
            except ssl.SSLError as exc:
                raise AttemptError(f"TLS failed: {exc}") from None
            except OSError as exc:
                failure = str(exc)
        raise AttemptError(f"cannot connect to {target.host}:{target.port}: {failure}")

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
