"""The guard every tenant-supplied URL goes through before Pigeon calls it.

A tenant who could point Pigeon at `http://127.0.0.1:...` or `http://169.254.169.254/` would
make Pigeon carry its requests (and its provider key) into the operator's own network. So a
tenant's URL must be `https` with no credentials in it, and its host must be public: not
loopback, private (RFC 1918, fc00::/7), link-local, CGNAT (100.64.0.0/10), multicast,
unspecified or reserved, nor a `localhost` name. The operator's own settings are trusted and
never come through here.

Three checks, one rule:
- `check_url_shape(url, allow_private=...)`: synchronous, on the text (scheme, credentials,
  host, literal IP addresses). Run it where the URL is accepted.
- `await check_url_target(url, allow_private=...)`: resolves the host with the loop's
  getaddrinfo and refuses it if any address it resolves to is not public. Run it where the URL
  is accepted, after the shape; a name that does not resolve (yet) passes, since the
  connection is checked again.
- `guarded_transport(allow_private=...)`: an httpx transport for the requests themselves. It
  checks each request's URL shape, and its connections resolve the host once, refuse it like
  `check_url_target`, and connect to the address that was checked. A name that resolved to a
  public address when it was stored and to 127.0.0.1 now (DNS rebinding) is refused here.

`allow_private=True` (PIGEON_ALLOW_PRIVATE_URLS=1: a closed network, or the test suite's fake
provider on 127.0.0.1) allows `http` and any host; credentials in a URL are always refused.
Every refusal is `UrlNotAllowed`, a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from pigeon.errors import Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
# How long resolving a name may take where a URL is accepted before it is taken as unresolved.
RESOLVE_TIMEOUT = 5.0


class UrlNotAllowed(Unprocessable):
    """A tenant-supplied URL that Pigeon refuses to call."""

    code = "url_not_allowed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", errors=[{"field": field, "message": message}])
        self.field = field
        self.reason = message


def address_refusal(address: IPAddress) -> str | None:
    """Why Pigeon must not connect to this address, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "a shared (CGNAT) address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # documentation, benchmarking, protocol-assignment ranges...
        return "a reserved address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_localhost(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _parse(url: str, field: str) -> httpx.URL:
    # httpx parses the URL that httpx will request: no second parser to disagree with.
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlNotAllowed(field, f"is not a valid URL ({exc})") from None


def check_url_shape(url: str, *, allow_private: bool, field: str = "baseUrl") -> str:
    """The base URL without surrounding blanks and trailing '/'; raises UrlNotAllowed if refused."""
    text = url.strip()
    parsed = _parse(text, field)
    _check_parsed(parsed, allow_private=allow_private, field=field)
    if parsed.query or parsed.fragment:
        raise UrlNotAllowed(field, "must not have a query or fragment")
    return text.rstrip("/")


def check_request_url(parsed: httpx.URL, *, allow_private: bool, field: str = "baseUrl") -> None:
    """The shape check of a URL about to be requested (a query is allowed): UrlNotAllowed."""
    _check_parsed(parsed, allow_private=allow_private, field=field)


def _check_parsed(parsed: httpx.URL, *, allow_private: bool, field: str) -> None:
    allowed = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in allowed:
        names = " or ".join(allowed)
        raise UrlNotAllowed(field, f"must be an {names} URL such as https://xxxxx.api.infobip.com")
    if parsed.userinfo:
        raise UrlNotAllowed(field, "must not carry credentials (user:password@)")
    if not parsed.host:
        raise UrlNotAllowed(field, "has no host")
    if not allow_private:
        _check_host(parsed.host, field)


def _check_host(host: str, field: str) -> None:
    if _is_localhost(host):
        raise UrlNotAllowed(field, f"host {host} is a localhost name")
    literal = _literal_address(host)
    if literal is not None and (reason := address_refusal(literal)) is not None:
        raise UrlNotAllowed(field, f"host {host} is {reason}")


async def resolve_allowed(
    host: str, port: int, *, field: str = "baseUrl", allow_private: bool = False
) -> list[str]:
    """The addresses `host` resolves to, all of them public; raises UrlNotAllowed otherwise.

    Resolution errors (socket.gaierror) propagate: a name that does not resolve is not refused.
    """
    if not allow_private:
        _check_host(host, field)
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if allow_private:
        return addresses
    for address in addresses:
        # A scope id (fe80::1%eth0) is not part of the address ipaddress knows.
        reason = address_refusal(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason is not None:
            raise UrlNotAllowed(field, f"host {host} resolves to {reason} ({address})")
    return addresses


async def check_url_target(url: str, *, allow_private: bool, field: str = "baseUrl") -> None:
    """Refuse a URL whose host resolves to a non-public address (UrlNotAllowed).

    A name that does not resolve now, or not within RESOLVE_TIMEOUT, passes: every connection
    to it is checked again by `guarded_transport`.
    """
    if allow_private:
        return
    parsed = _parse(url.strip(), field)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            await resolve_allowed(parsed.host, port, field=field)
    except (OSError, TimeoutError):
        return


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to checked addresses."""

    def __init__(self, *, allow_private: bool, field: str = "baseUrl") -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private
        self._field = field

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, refuse non-public addresses, then connect to the first that answers."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_allowed(
                    host, port, field=self._field, allow_private=self._allow_private
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        failure: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                # TLS still verifies and sends SNI for `host`: httpcore takes it from the URL.
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a tenant's URL is a TCP URL."""
        raise UrlNotAllowed(self._field, "must not name a unix socket")

    async def sleep(self, seconds: float) -> None:
        """httpcore's retry pause."""
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with each request's URL checked and its connections guarded."""

    def __init__(
        self,
        *,
        allow_private: bool,
        limits: httpx.Limits,
        field: str = "baseUrl",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # The base class builds the same pool, only without a way to pass the network backend;
        # no proxy from the environment either, since a proxy would connect for us unchecked.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(allow_private=allow_private, field=field),
        )
        self._allow_private = allow_private
        self._field = field

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check the URL's shape, then send it on a guarded connection."""
        _check_parsed(request.url, allow_private=self._allow_private, field=self._field)
        return await super().handle_async_request(request)


def guarded_transport(
    *, allow_private: bool, limits: httpx.Limits, field: str = "baseUrl"
) -> httpx.AsyncBaseTransport:
    """The transport for an httpx client that calls tenant-supplied URLs."""
    return GuardedTransport(allow_private=allow_private, limits=limits, field=field)
