"""Email through an SMTP relay: a real `pigeon serve` and a real aiosmtpd relay on 127.0.0.1.

The relay requires STARTTLS (a self-signed certificate made by the test, which Pigeon trusts
through SSL_CERT_FILE) and AUTH; Pigeon's MIME is checked part by part as the relay got it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Server, free_port, make_server, wait_for_final
from tests.databases import Databases
from tests.factories import create_tenant
from tests.fakes.smtp import FakeRelay, Received

SENDER = "Pigeon Relay Test <noreply@pigeon.test>"
USERNAME, PASSWORD = "pigeon-relay", "relay-secret-5c1e"


@pytest.fixture(scope="module")
def relay_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRelay]:
    relay = FakeRelay(
        tmp_path_factory.mktemp("relay"), username=USERNAME, password=PASSWORD, port=free_port()
    )
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def pigeon(
    tmp_path_factory: pytest.TempPathFactory, databases: Databases, relay_server: FakeRelay
) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("pigeon-smtp"),
        PIGEON_EMAIL_PROVIDERS="smtp",
        PIGEON_SMTP_HOST="127.0.0.1",
        PIGEON_SMTP_PORT=str(relay_server.port),
        PIGEON_SMTP_USERNAME=USERNAME,
        PIGEON_SMTP_PASSWORD=PASSWORD,
        PIGEON_SMTP_POOL_SIZE="2",
        PIGEON_SMTP_TIMEOUT_SECONDS="5",
        PIGEON_EMAIL_SENDER=SENDER,
        SSL_CERT_FILE=str(relay_server.cert_file),
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def relay(relay_server: FakeRelay) -> FakeRelay:
    relay_server.reset()
    return relay_server


@pytest.fixture
def api(pigeon: Server) -> Iterator[httpx.Client]:
    with pigeon.client(create_tenant(pigeon).api_key) as client:
        yield client


def send_email(api: httpx.Client, to: str, **content: str) -> str:
    response = api.post("/v1/apps/message/email", json={"to": to, "content": content})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


def received_for(relay: FakeRelay, to: str, timeout: float = 10.0) -> Received:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in relay.received if to in r.rcpt_tos]
        if found:
            assert len(found) == 1, f"{to} received {len(found)} times"
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"the relay never received mail for {to}")


def test_text_and_html_go_as_multipart_alternative_over_starttls_with_auth(
    api: httpx.Client, relay: FakeRelay
) -> None:
    message_id = send_email(
        api,
        "ana@example.com",
        subject="Ihre Bestellung: Größe ändern ✓",
        text="Hello Ana, your order shipped.",
        html="<p>Hello <b>Ana</b>, your order shipped.</p>",
    )

    got = received_for(relay, "ana@example.com")
    final = wait_for_final(api, message_id)

    assert got.encrypted
    assert got.login == USERNAME
    assert got.mail_from == "noreply@pigeon.test"
    email = got.email
    assert email["From"] == SENDER
    assert email["To"] == "ana@example.com"
    assert email["Subject"] == "Ihre Bestellung: Größe ändern ✓"
    raw_headers = got.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii()  # RFC 2047 encoded words, not raw UTF-8
    assert b"=?utf-8?" in raw_headers.split(b"Subject:", 1)[1].split(b"\r\n", 1)[0]
    assert parsedate_to_datetime(email["Date"]).tzinfo is not None
    assert message_id in email["Message-ID"]
    assert email.get_content_type() == "multipart/alternative"
    parts = list(email.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Hello Ana, your order shipped."
    assert parts[1].get_content().strip() == "<p>Hello <b>Ana</b>, your order shipped.</p>"

    assert final["status"]["name"] == "DELIVERED_TO_OPERATOR"
    assert (final["status"]["groupId"], final["status"]["id"]) == (3, 2)
    assert final["provider"] == "smtp"
    assert final["providerMessageId"] == email["Message-ID"]
    [attempt] = final["deliveryAttempts"]
    assert attempt["provider"] == "smtp"
    assert attempt["outcome"] == "accepted"
    assert attempt["response"].startswith("250 2.0.0 Ok: queued as Q")


def test_html_alone_gets_a_text_part_derived_from_it(api: httpx.Client, relay: FakeRelay) -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<h1>Welcome</h1><p>Read the <a href='https://pigeon.test/guide'>guide</a>.</p>"
        "<ul><li>one</li><li>two</li></ul></body></html>"
    )
    send_email(api, "html-only@example.com", subject="Welcome", html=html)

    email = received_for(relay, "html-only@example.com").email
    text, rich = list(email.iter_parts())

    assert email.get_content_type() == "multipart/alternative"
    assert rich.get_content_type() == "text/html"
    assert rich.get_content().strip() == html
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "Welcome" in body
    assert "Read the guide (https://pigeon.test/guide)." in body
    assert "- one" in body
    assert "- two" in body
    assert "color" not in body
    assert "<" not in body


def test_text_alone_is_a_single_plain_part(api: httpx.Client, relay: FakeRelay) -> None:
    send_email(api, "plain@example.com", subject="Plain", text="Just text.")

    email = received_for(relay, "plain@example.com").email

    assert email.get_content_type() == "text/plain"
    assert email.get_content().strip() == "Just text."


def test_a_550_mailbox_refusal_at_rcpt_is_undeliverable(
    api: httpx.Client, relay: FakeRelay
) -> None:
    relay.reject_recipient(
        "nobody@example.com", "550 5.1.1 <nobody@example.com>: Recipient address rejected"
    )
    message_id = send_email(api, "nobody@example.com", subject="Hi", text="Hi")

    final = wait_for_final(api, message_id)

    assert final["status"]["name"] == "UNDELIVERABLE_NOT_DELIVERED"
    error = final["error"]
    assert error["provider"] == "smtp"
    assert error["id"] == "550"
    assert error["permanent"] is True
    assert "Recipient address rejected" in error["description"]
    assert error["raw"] == {
        "code": 550,
        "message": "5.1.1 <nobody@example.com>: Recipient address rejected",
        "stage": "RCPT TO",
    }
    assert [a["outcome"] for a in final["deliveryAttempts"]] == ["rejected"]


def test_a_5xx_at_data_is_rejected_with_the_smtp_code(api: httpx.Client, relay: FakeRelay) -> None:
    relay.reply_next("DATA", "554 5.7.1 Message content rejected as spam")
    message_id = send_email(api, "spam@example.com", subject="Buy", text="now")

    final = wait_for_final(api, message_id)

    assert final["status"]["groupName"] == "REJECTED"
    assert final["error"]["id"] == "554"
    assert final["error"]["stage"] == "DATA"
    assert "content rejected" in final["error"]["description"]
    assert relay.received == []


def wait_for_attempts(
    api: httpx.Client, message_id: str, outcomes: list[str], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(f"/v1/messages/{message_id}").json()
        seen = [a["outcome"] for a in body["deliveryAttempts"]]
        if seen == outcomes or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("inject", "stage"),
    [
        (lambda relay: relay.reply_next("RCPT", "451 4.7.1 Greylisted, try again"), "RCPT TO"),
        (lambda relay: relay.drop_next("DATA"), "DATA"),
    ],
    ids=["4xx-at-rcpt", "dropped-at-data"],
)
def test_a_4xx_or_a_dropped_connection_is_retried_and_delivered_once(
    api: httpx.Client, relay: FakeRelay, inject: Any, stage: str
) -> None:
    inject(relay)
    to = f"retry-{stage.split()[0].lower()}@example.com"
    message_id = send_email(api, to, subject="Again", text="Second time lucky")

    body = wait_for_attempts(api, message_id, ["transient", "accepted"])

    first, second = body["deliveryAttempts"]
    assert first["error"]["permanent"] is False
    assert first["error"]["stage"] == stage
    assert second["response"].startswith("250")
    assert body["status"]["name"] == "DELIVERED_TO_OPERATOR"
    received_for(relay, to)  # exactly once


def test_connections_are_pooled_and_reused(api: httpx.Client, relay: FakeRelay) -> None:
    addresses = [f"pooled-{i}@example.com" for i in range(8)]
    ids = [send_email(api, to, subject="Pooled", text="reuse") for to in addresses]

    sessions = {received_for(relay, to).session for to in addresses}
    for message_id in ids:
        assert wait_for_final(api, message_id)["status"]["name"] == "DELIVERED_TO_OPERATOR"

    assert 1 <= len(sessions) <= 2  # PIGEON_SMTP_POOL_SIZE=2


def test_a_refused_login_rejects_the_email_without_sending_it(
    tmp_path: Any, databases: Databases, relay: FakeRelay
) -> None:
    srv = make_server(
        tmp_path,
        PIGEON_EMAIL_PROVIDERS="smtp",
        PIGEON_SMTP_HOST="127.0.0.1",
        PIGEON_SMTP_PORT=str(relay.port),
        PIGEON_SMTP_USERNAME=USERNAME,
        PIGEON_SMTP_PASSWORD="not-the-password",
        PIGEON_EMAIL_SENDER=SENDER,
        SSL_CERT_FILE=str(relay.cert_file),
    )
    srv.start()
    try:
        with srv.client(create_tenant(srv).api_key) as api:
            message_id = send_email(api, "locked-out@example.com", subject="Hi", text="Hi")
            final = wait_for_final(api, message_id)
    finally:
        srv.stop()

    assert final["status"]["name"] == "REJECTED_SOURCE"
    assert final["error"]["stage"] == "AUTH"
    assert final["error"]["id"] == "535"
    assert relay.received == []
