"""The tenant-URL guard: a tenant's Infobip baseUrl cannot point Pigeon into the operator's network.

The rest of the suite runs with PIGEON_ALLOW_PRIVATE_URLS=1 (its fake Infobip is on
http://127.0.0.1); here servers run without it, as a deployment does. Nothing here connects
anywhere but 127.0.0.1: refused addresses are refused before any connection is made.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pigeon import netguard
from pigeon.netguard import UrlNotAllowed, check_url_shape, check_url_target, guarded_transport
from tests.conftest import Server, free_port, make_server, wait_for_final
from tests.databases import Databases, scalar
from tests.factories import create_tenant, enable_extension, make_person, make_user
from tests.fakes.infobip import FakeInfobip

PLATFORM_KEY = "platform-key-guard-1234"
TENANT_KEY = "tenant-key-guard-5678"
INTERNAL_SECRET = "internal-admin-password-42"

REFUSED = [
    ("http://tenant.api.infobip.com", "https"),
    ("https://user:pass@tenant.api.infobip.com", "credentials"),
    ("https://tenant.api.infobip.com\\@127.0.0.1", "credentials"),
    ("https://127.0.0.1:8443", "loopback"),
    ("https://[::1]", "loopback"),
    ("https://[::ffff:127.0.0.1]", "loopback"),
    ("https://localhost", "localhost"),
    ("https://localhost.", "localhost"),
    ("https://admin.LOCALHOST", "localhost"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]", "link-local"),
    ("https://10.1.2.3", "private"),
    ("https://192.168.0.10", "private"),
    ("https://172.16.5.4", "private"),
    ("https://[fd00::1]", "private"),
    ("https://100.64.0.1", "CGNAT"),
    ("https://224.0.0.251", "multicast"),
    ("https://0.0.0.0", "unspecified"),
    ("https://240.0.0.1", "reserved"),
    # Names that getaddrinfo resolves to 127.0.0.1 (inet_aton's short and decimal forms).
    ("https://127.1", "loopback"),
    ("https://2130706433", "loopback"),
]


def _server_without_private_urls(tmp: Path, **overrides: str) -> Server:
    return make_server(tmp, PIGEON_ALLOW_PRIVATE_URLS="0", **overrides)


@pytest.fixture(scope="module")
def strict_server(
    tmp_path_factory: pytest.TempPathFactory, databases: Databases
) -> Iterator[Server]:
    """A sandbox Pigeon as deployed: tenants' URLs must be public https."""
    srv = _server_without_private_urls(tmp_path_factory.mktemp("strict"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def strict_api(strict_server: Server) -> Iterator[httpx.Client]:
    with strict_server.client(create_tenant(strict_server).api_key) as client:
        yield client


# --- PUT /v1/extensions/infobip ---------------------------------------------------------------


@pytest.mark.parametrize(("base_url", "why"), REFUSED)
def test_put_refuses_a_base_url_pigeon_must_not_call(
    strict_api: httpx.Client, base_url: str, why: str
) -> None:
    response = strict_api.put(
        "/v1/extensions/infobip", json={"baseUrl": base_url, "apiKey": TENANT_KEY}
    )

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "url_not_allowed", problem
    assert problem["errors"][0]["field"] == "baseUrl", problem
    assert why.lower() in problem["errors"][0]["message"].lower(), problem
    assert strict_api.get("/v1/extensions/infobip").status_code == 404


def test_put_accepts_a_public_https_url(strict_api: httpx.Client) -> None:
    # The name does not resolve on this machine: that passes, every connection is checked.
    put = enable_extension(strict_api, baseUrl="https://abcde.api.infobip.com/")

    assert put["baseUrl"] == "https://abcde.api.infobip.com"


def test_a_url_with_a_query_or_without_a_host_is_refused(strict_api: httpx.Client) -> None:
    for base_url in ("https://abcde.api.infobip.com/?x=1", "https://", "ftp://x", "not a url"):
        response = strict_api.put(
            "/v1/extensions/infobip", json={"baseUrl": base_url, "apiKey": TENANT_KEY}
        )
        assert response.status_code == 422, (base_url, response.text)
        assert response.json()["errors"][0]["field"] == "baseUrl"


# --- the module itself, with a resolver that answers what the test says --------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the event loop's getaddrinfo resolves to given addresses (others: real lookup)."""
    names: dict[str, list[str]] = {}
    real = asyncio.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, **kwargs: Any) -> Any:
        if host in names:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (a, port),
                )
                for a in names[host]
            ]
        return await real(self, host, port, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    return names


@pytest.mark.parametrize(
    ("addresses", "why"),
    [
        (["127.0.0.1"], "loopback"),
        (["93.184.215.14", "10.0.0.7"], "private"),  # one bad address is enough
        (["::ffff:169.254.169.254"], "link-local"),
        (["100.100.100.200"], "CGNAT"),
        (["fc00::5"], "private"),
        (["ff02::1"], "multicast"),
        (["::"], "unspecified"),
    ],
)
def test_a_name_resolving_to_a_refused_address_is_refused(
    resolver: dict[str, list[str]], addresses: list[str], why: str
) -> None:
    resolver["api.tenant.example"] = addresses
    url = check_url_shape("https://api.tenant.example/", allow_private=False)

    with pytest.raises(UrlNotAllowed) as refused:
        asyncio.run(check_url_target(url, allow_private=False))
    assert refused.value.errors == [{"field": "baseUrl", "message": refused.value.reason}]
    assert why.lower() in refused.value.reason.lower()
    asyncio.run(check_url_target(url, allow_private=True))


def test_a_name_resolving_to_public_addresses_passes(resolver: dict[str, list[str]]) -> None:
    resolver["api.tenant.example"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    asyncio.run(check_url_target("https://api.tenant.example", allow_private=False))


def test_allow_private_allows_http_and_private_hosts_but_never_credentials() -> None:
    assert check_url_shape(" http://127.0.0.1:9/x/ ", allow_private=True) == "http://127.0.0.1:9/x"
    with pytest.raises(UrlNotAllowed):
        check_url_shape("http://u:p@127.0.0.1:9", allow_private=True)
    with pytest.raises(UrlNotAllowed):
        check_url_shape("ftp://127.0.0.1", allow_private=True)


class _Listener:
    """A loopback socket that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)

    def drain(self) -> int:
        try:
            while True:
                conn, _ = self.sock.accept()
                conn.close()
                self.accepted += 1
        except TimeoutError:
            return self.accepted


def test_the_transport_refuses_a_name_that_now_resolves_to_loopback(
    resolver: dict[str, list[str]],
) -> None:
    # DNS rebinding: the name was public when the tenant stored it, and is 127.0.0.1 now.
    listener = _Listener()
    resolver["rebound.tenant.example"] = ["127.0.0.1"]

    async def call(allow_private: bool) -> None:
        transport = guarded_transport(allow_private=allow_private, limits=httpx.Limits())
        async with httpx.AsyncClient(transport=transport, timeout=2) as client:
            await client.get(f"https://rebound.tenant.example:{listener.port}/sms/3/messages")

    with pytest.raises(UrlNotAllowed, match="resolves to a loopback address"):
        asyncio.run(call(False))
    assert listener.drain() == 0, "the guard connected before refusing"
    # Allowed, the same call does reach the listener (which then hangs up: no TLS there).
    with pytest.raises(httpx.TransportError):
        asyncio.run(call(True))
    assert listener.drain() >= 1
    listener.sock.close()


def test_the_transport_checks_each_request_url_shape() -> None:
    async def call(url: str) -> None:
        transport = guarded_transport(allow_private=False, limits=httpx.Limits())
        async with httpx.AsyncClient(transport=transport, timeout=2) as client:
            await client.get(url)

    for url in ("http://tenant.api.infobip.com/x", "https://127.0.0.1:1/x", "https://[::1]:1/x"):
        with pytest.raises(UrlNotAllowed):
            asyncio.run(call(url))


def test_resolution_has_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(self: Any, host: Any, port: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(60)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", never)
    monkeypatch.setattr(netguard, "RESOLVE_TIMEOUT", 0.2)
    started = time.monotonic()
    asyncio.run(check_url_target("https://slow.tenant.example", allow_private=False))
    assert time.monotonic() - started < 5


# --- at send time, and what the tenant sees of a provider's answer -------------------------------


class _InternalService(BaseHTTPRequestHandler):
    """Something that is not Infobip: answers every POST/PUT with an HTML page holding a secret."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = f"<html><body>admin console, password {INTERNAL_SECRET}</body></html>".encode()
        self.send_response(400)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def internal_service() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _InternalService)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def platform_fake() -> Iterator[FakeInfobip]:
    with FakeInfobip(api_key=PLATFORM_KEY, report_delay=0.05) as fake:
        yield fake


@pytest.fixture(scope="module")
def tenant_fake() -> Iterator[FakeInfobip]:
    with FakeInfobip(api_key=TENANT_KEY, report_delay=0.05) as fake:
        yield fake


def _infobip_env(platform_url: str) -> dict[str, str]:
    port = free_port()
    return {
        "PIGEON_PORT": str(port),
        "PIGEON_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PIGEON_PROVIDER": "infobip",
        # The operator's own account: trusted, never checked, even on http://127.0.0.1.
        "PIGEON_INFOBIP_BASE_URL": platform_url,
        "PIGEON_INFOBIP_API_KEY": PLATFORM_KEY,
        "PIGEON_SECRET_KEY": "url-guard-test-secret-0123456789",
    }


def _wait_until(probe: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _synced(client: httpx.Client, identity_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/identities/{identity_id}").json()
        return body if body["sync"] and body["sync"]["state"] != "pending" else None

    return _wait_until(probe, f"the CDP sync of {identity_id}")  # type: ignore[no-any-return]


def test_a_stored_url_is_checked_again_at_send_time(
    tmp_path: Path, databases: Databases, platform_fake: FakeInfobip, tenant_fake: FakeInfobip
) -> None:
    platform_fake.reset()
    tenant_fake.reset()
    env = _infobip_env(platform_fake.base_url)
    # Stored while private URLs were allowed (or: resolving to a public address back then).
    first = make_server(tmp_path, **env, PIGEON_ALLOW_PRIVATE_URLS="1")
    first.start()
    tenant = create_tenant(first)
    with first.client(tenant.api_key) as api:
        enable_extension(api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY)
    assert first.stop()
    tenant_fake.reset()  # the extension's first sync, if any, is not what this test is about

    port = free_port()
    second = make_server(
        tmp_path,
        **{
            **env,
            "PIGEON_PORT": str(port),
            "PIGEON_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PIGEON_DATABASE_URL": first.env["PIGEON_DATABASE_URL"],
            "PIGEON_ALLOW_PRIVATE_URLS": "0",
        },
    )
    second.start()
    try:
        with second.client(tenant.api_key) as api:
            person = make_person(api)
            sent = api.post(
                f"/v1/identities/{person['id']}/person/message/sms",
                json={"content": {"text": "to the internal network?"}},
            )
            assert sent.status_code == 200, sent.text
            message = wait_for_final(api, sent.json()["messages"][0]["messageId"])
            assert message["status"]["groupName"] == "REJECTED", message
            assert message["error"]["id"] == "URL_NOT_ALLOWED", message
            assert "baseUrl" in message["error"]["description"]
            assert "must be an https URL" in message["error"]["description"]
            assert message["attempts"] <= 1

            synced = _synced(api, person["id"])
            assert synced["sync"]["state"] == "failed", synced
            assert synced["sync"]["error"]["id"] == "URL_NOT_ALLOWED", synced

            # The operator's own account, on http://127.0.0.1 too, still sends.
            user = make_user(api)
            to_user = api.post(
                f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "hi"}}
            )
            assert (
                wait_for_final(api, to_user.json()["messages"][0]["messageId"])["status"][
                    "groupName"
                ]
                == "DELIVERED"
            )
        assert tenant_fake.received == [], "Pigeon called the refused URL"
        assert platform_fake.sms_messages
    finally:
        second.stop()


def test_a_body_that_is_not_an_infobip_error_never_reaches_the_tenant(
    tmp_path: Path, databases: Databases, platform_fake: FakeInfobip, internal_service: str
) -> None:
    pigeon = make_server(tmp_path, **_infobip_env(platform_fake.base_url))
    pigeon.start()
    try:
        tenant = create_tenant(pigeon)
        with pigeon.client(tenant.api_key) as api:
            enable_extension(api, baseUrl=internal_service, apiKey=TENANT_KEY)
            person = make_person(api)
            sent = api.post(
                f"/v1/identities/{person['id']}/person/message/sms",
                json={"content": {"text": "hello"}},
            )
            message_id = sent.json()["messages"][0]["messageId"]
            message = wait_for_final(api, message_id)
            assert message["status"]["groupName"] == "REJECTED", message
            assert message["error"]["description"] == (
                "HTTP 400 Bad Request, not an Infobip error answer"
            )
            assert INTERNAL_SECRET not in api.get(f"/v1/messages/{message_id}").text
            assert INTERNAL_SECRET not in api.get("/v1/messages").text

            synced = _synced(api, person["id"])
            assert synced["sync"]["state"] == "failed", synced
            assert INTERNAL_SECRET not in str(synced)
            assert "HTTP 400" in synced["sync"]["error"]["description"]
        # The attempt log, which only the operator reads, keeps what was answered.
        logged = scalar(
            pigeon.env["PIGEON_DATABASE_URL"],
            f"SELECT response FROM delivery_attempts WHERE message_id = '{message_id}'",
        )
        assert INTERNAL_SECRET in logged
    finally:
        pigeon.stop()
