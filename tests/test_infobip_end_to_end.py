"""Pigeon with PIGEON_PROVIDER=infobip, end to end over real HTTP against two fake Infobips.

One `pigeon serve` for the module talks to a "platform" fake (the operator's account, for
Users and apps) and, through tenants' Infobip extensions, to a "tenant" fake (for Persons and
the CDP sync). The fakes post their delivery reports back to the notify URLs Pigeon gave them,
which point at Pigeon's own webhooks through PIGEON_PUBLIC_URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text

from pigeon.db.engine import create_engine
from tests.conftest import DEMO_ID, DEMO_KEY, Server, free_port, make_server, wait_for_final
from tests.databases import Databases
from tests.factories import (
    create_tenant,
    enable_extension,
    make_person,
    make_user,
    open_whatsapp_window,
    unique_phone,
)
from tests.fakes.infobip import FakeInfobip, SentMessage
from tests.test_docs_examples import DOCUMENTED_STATUS, EXAMPLES, HEADERS

PLATFORM_KEY = "platform-infobip-key-7f3a9c21"
TENANT_KEY = "tenant-infobip-key-5b8e0d44"
SECRET_KEY = "e2e-pigeon-secret-key-0123456789"
SMS_SENDER = "PigeonE2E"
WHATSAPP_SENDER = "447860088593"
EMAIL_SENDER = "Pigeon E2E <noreply@pigeon.test>"
# The demo tenant's senders (as seeded), kept when its extension is pointed at the tenant fake.
DEMO_SMS_SENDER = "Orangepill"
DEMO_WHATSAPP_SENDER = "447860088594"
DEMO_EMAIL_SENDER = "Orangepill <noreply@orangepill.example>"
SMS_PATH = "/sms/3/messages"
WHATSAPP_TEXT_PATH = "/whatsapp/1/message/text"
WHATSAPP_TEMPLATE_PATH = "/whatsapp/1/message/template"
EMAIL_PATH = "/email/3/send"
PERSONS_PATH = "/people/2/persons"
T = TypeVar("T")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform_fake_server() -> Iterator[FakeInfobip]:
    with FakeInfobip(api_key=PLATFORM_KEY, report_delay=0.05) as fake:
        yield fake


@pytest.fixture(scope="module")
def tenant_fake_server() -> Iterator[FakeInfobip]:
    with FakeInfobip(api_key=TENANT_KEY, report_delay=0.05) as fake:
        yield fake


def infobip_env(port: int, platform_url: str) -> dict[str, str]:
    """Environment overrides for a Pigeon sending through the platform fake at `platform_url`."""
    return {
        "PIGEON_PORT": str(port),
        "PIGEON_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PIGEON_PROVIDER": "infobip",
        "PIGEON_INFOBIP_BASE_URL": platform_url,
        "PIGEON_INFOBIP_API_KEY": PLATFORM_KEY,
        "PIGEON_SMS_SENDER": SMS_SENDER,
        "PIGEON_WHATSAPP_SENDER": WHATSAPP_SENDER,
        "PIGEON_EMAIL_SENDER": EMAIL_SENDER,
        "PIGEON_SECRET_KEY": SECRET_KEY,
        "PIGEON_WORKER_POLL_INTERVAL": "0.05",
    }


@pytest.fixture(scope="module")
def pigeon_process(
    tmp_path_factory: pytest.TempPathFactory,
    databases: Databases,
    platform_fake_server: FakeInfobip,
    tenant_fake_server: FakeInfobip,
) -> Iterator[Server]:
    """One Pigeon sending through the platform fake; its public URL is its own address."""
    env = infobip_env(free_port(), platform_fake_server.base_url)
    srv = make_server(tmp_path_factory.mktemp("pigeon-infobip"), **env)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def platform_webhooks(pigeon_process: Server) -> dict[str, str]:
    """`pigeon webhooks`, parsed: {"delivery_reports": url, "inbound": url}."""
    return dict(line.split(": ", 1) for line in pigeon_process.cli("webhooks").splitlines())


@pytest.fixture(scope="module")
def pigeon(pigeon_process: Server, platform_webhooks: dict[str, str]) -> Server:
    """The module's Pigeon, after the operator ran `pigeon webhooks` (as the README says).

    Running it first also creates the platform's webhook token; on a fresh server without it,
    see test_platform_reports_are_accepted_on_a_fresh_server.
    """
    return pigeon_process


@pytest.fixture(scope="module")
def demo_extension(pigeon: Server, tenant_fake_server: FakeInfobip) -> dict[str, Any]:
    """The demo tenant's extension, pointed at the tenant fake with the demo's senders."""
    with pigeon.client(DEMO_KEY) as client:
        return enable_extension(
            client,
            baseUrl=tenant_fake_server.base_url,
            apiKey=TENANT_KEY,
            smsSender=DEMO_SMS_SENDER,
            whatsappSender=DEMO_WHATSAPP_SENDER,
            emailSender=DEMO_EMAIL_SENDER,
        )


@pytest.fixture
def platform(platform_fake_server: FakeInfobip) -> FakeInfobip:
    platform_fake_server.reset()
    return platform_fake_server


@pytest.fixture
def tenant_fake(tenant_fake_server: FakeInfobip) -> FakeInfobip:
    tenant_fake_server.reset()
    return tenant_fake_server


@pytest.fixture
def demo(pigeon: Server) -> Iterator[httpx.Client]:
    with pigeon.client(DEMO_KEY) as client:
        yield client


@pytest.fixture
def api(pigeon: Server) -> Iterator[httpx.Client]:
    """A fresh tenant of the module's Pigeon."""
    with pigeon.client(create_tenant(pigeon).api_key) as client:
        yield client


# --- helpers -------------------------------------------------------------------------------


def wait_all_final(
    client: httpx.Client, ids: list[str], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """wait_for_final for several messages, within one overall timeout."""
    deadline = time.monotonic() + timeout
    return [wait_for_final(client, i, timeout=max(0.0, deadline - time.monotonic())) for i in ids]


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll until `probe` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def message(client: httpx.Client, message_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def send(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    """POST a send; assert it was accepted as documented; the message id."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    [accepted] = response.json()["messages"]
    assert accepted["status"] == DOCUMENTED_STATUS
    return str(accepted["messageId"])


def sms_to(number: str, text: str = "Hello from the end-to-end test") -> dict[str, Any]:
    return {"to": number, "content": {"text": text}}


def received_once(fake: FakeInfobip, message_id: str) -> SentMessage:
    """The one message the fake received under this messageId."""
    found = [m for m in fake.messages if m.message_id == message_id]
    assert len(found) == 1, (message_id, found)
    return found[0]


def posted_report(fake: FakeInfobip, message_id: str) -> tuple[str, dict[str, Any]]:
    """(url, report entry) of the delivery report the fake posted for a message."""

    def probe() -> tuple[str, dict[str, Any]] | None:
        for posted in list(fake.reports):
            for entry in posted.payload["results"]:
                if entry["messageId"] == message_id:
                    assert posted.http_status == 200, posted
                    return posted.url, entry
        return None

    return wait_until(probe, what=f"the report for {message_id}")


def history(body: dict[str, Any]) -> list[str]:
    return [event["status"]["name"] for event in body["history"]]


def infobip_time(moment: datetime) -> str:
    """Infobip's timestamp format, e.g. 2026-11-27T08:00:00.000+0000."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def sync_settled(client: httpx.Client, identity_id: str) -> dict[str, Any]:
    """The identity once its CDP sync is no longer pending."""

    def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/identities/{identity_id}").json()
        sync = body.get("sync")
        return body if sync and sync["state"] != "pending" else None

    return wait_until(probe, timeout=15, what=f"the CDP sync of {identity_id}")


def stored_api_keys(server: Server) -> dict[str, str]:
    """infobip_extensions.api_key per account, read straight from the server's database."""

    async def read() -> dict[str, str]:
        engine = create_engine(server.env["PIGEON_DATABASE_URL"])
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text("SELECT account_id, api_key FROM infobip_extensions")
                )
                return {str(row[0]): str(row[1]) for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


# --- 1. the documented examples, through Infobip ------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "destination"),
    EXAMPLES,
    ids=[f"{p.split('/')[2]}-{p.rsplit('/', 1)[1]}" for p, _, _ in EXAMPLES],
)
def test_documented_example_is_sent_through_the_right_infobip_account_and_delivered(
    pigeon: Server,
    platform: FakeInfobip,
    tenant_fake: FakeInfobip,
    demo_extension: dict[str, Any],
    platform_webhooks: dict[str, str],
    path: str,
    body: str,
    destination: str,
) -> None:
    to_user = path.startswith("/v1/users/")
    channel = path.rsplit("/", 1)[1]
    with httpx.Client(base_url=pigeon.base_url) as client:
        response = client.post(path, content=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    [accepted] = response.json()["messages"]
    assert accepted["status"] == DOCUMENTED_STATUS
    assert accepted["destination"] == destination
    message_id = accepted["messageId"]

    with pigeon.client(DEMO_KEY) as demo:
        final = wait_for_final(demo, message_id, timeout=15)
        assert final["status"]["name"] == "DELIVERED_TO_HANDSET", final
        url, report = posted_report(platform if to_user else tenant_fake, message_id)
        final = message(demo, message_id)  # read again: the report's 200 came after the update

    # Users' messages go through the platform's account, Persons' through the tenant's.
    used, other = (platform, tenant_fake) if to_user else (tenant_fake, platform)
    key = PLATFORM_KEY if to_user else TENANT_KEY
    senders = (
        {"sms": SMS_SENDER, "whatsapp": WHATSAPP_SENDER, "email": EMAIL_SENDER}
        if to_user
        else {"sms": DEMO_SMS_SENDER, "whatsapp": DEMO_WHATSAPP_SENDER, "email": DEMO_EMAIL_SENDER}
    )
    sent = received_once(used, message_id)
    assert not any(m.message_id == message_id for m in other.messages)
    assert sent.channel == channel
    assert sent.to == destination
    assert sent.sender == senders[channel]
    api_path = {"sms": SMS_PATH, "whatsapp": WHATSAPP_TEXT_PATH, "email": EMAIL_PATH}[channel]
    assert {r.headers["authorization"] for r in used.requests_to(api_path)} == {f"App {key}"}
    assert used.duplicates() == {}
    expected_notify = (
        platform_webhooks["delivery_reports"]
        if to_user
        else demo_extension["webhooks"]["deliveryReports"]
    )
    assert url == expected_notify
    assert url.startswith(pigeon.base_url + "/v1/webhooks/infobip/")

    assert final["providerMessageId"] == message_id
    assert final["destination"] == destination
    assert final["sender"] == senders[channel]
    assert final["attempts"] == 1
    assert history(final) == ["PENDING_ACCEPTED", "PENDING_ENROUTE", "DELIVERED_TO_HANDSET"]
    assert final["history"][-1]["source"] == "report"
    assert final["history"][-1]["detail"]["raw"] == report  # the report as Infobip sent it


# --- 2. batching ---------------------------------------------------------------------------


def test_queued_sms_reach_infobip_in_fewer_requests_than_messages(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    # The first SMS holds the worker for a second (Infobip answers late); 30 more queue behind.
    platform.delay_next(1, seconds=1.0)
    blocker = send(demo, "/v1/apps/message/sms", sms_to(unique_phone()))
    wait_until(lambda: platform.requests_to(SMS_PATH), what="the first SMS request")
    numbers = [unique_phone() for _ in range(30)]
    ids = [
        send(demo, "/v1/apps/message/sms", sms_to(n, f"Batch {i}")) for i, n in enumerate(numbers)
    ]

    wait_until(
        lambda: all(message(demo, i)["providerMessageId"] for i in ids),
        timeout=15,
        what="all 30 SMS to be taken by Infobip",
    )

    carrying = [
        r
        for r in platform.requests_to(SMS_PATH)
        if any(d["messageId"] in ids for m in r.body["messages"] for d in m["destinations"])
    ]
    assert len(carrying) < len(ids), f"{len(ids)} SMS took {len(carrying)} requests"
    assert sorted(m.message_id for m in platform.sms_messages) == sorted([blocker, *ids])
    assert sorted(m.to for m in platform.sms_messages if m.message_id in ids) == sorted(numbers)
    assert platform.duplicates() == {}


def test_reports_that_race_the_recording_of_the_send_are_not_lost(
    demo: httpx.Client, platform: FakeInfobip, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Infobip reports 50 ms after taking a batch of 60, while Pigeon still records its answer
    # (one transaction for the batch): each report must still end its message DELIVERED.
    monkeypatch.setattr(platform, "report_delay", 0.05)
    platform.delay_next(1, seconds=0.5)
    send(demo, "/v1/apps/message/sms", sms_to(unique_phone()))
    wait_until(lambda: platform.requests_to(SMS_PATH), what="the first SMS request")
    ids = [send(demo, "/v1/apps/message/sms", sms_to(unique_phone())) for _ in range(60)]
    for message_id in ids:
        posted_report(platform, message_id)  # each report was posted and answered 200

    finals = wait_all_final(demo, ids, timeout=5)

    stuck = [(f["messageId"], history(f)) for f in finals if f["status"]["groupId"] == 1]
    assert stuck == [], f"{len(stuck)} of {len(ids)} delivered messages lost their report"


# --- 3. outages ----------------------------------------------------------------------------


def test_503_outage_delays_sms_but_none_is_lost_or_duplicated(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    platform.fail_next(3, status=503)
    numbers = [unique_phone() for _ in range(3)]
    ids = [send(demo, "/v1/apps/message/sms", sms_to(n)) for n in numbers]

    def first_failure_recorded() -> dict[str, Any] | None:
        body = message(demo, ids[0])
        return body if body["attempts"] >= 1 and body["status"]["groupId"] == 1 else None

    pending = wait_until(first_failure_recorded, what="the first failed attempt")
    assert pending["status"]["name"] == "PENDING_ACCEPTED"
    assert pending["error"] is not None, pending
    assert pending["error"]["httpStatus"] == 503
    assert pending["error"]["permanent"] is False
    assert pending["providerMessageId"] is None

    finals = wait_all_final(demo, ids, timeout=25)

    assert [f["status"]["name"] for f in finals] == ["DELIVERED_TO_HANDSET"] * 3
    assert all(f["attempts"] > 1 for f in finals), [f["attempts"] for f in finals]
    assert all(f["providerMessageId"] == f["messageId"] for f in finals)
    assert sorted(m.message_id for m in platform.sms_messages) == sorted(ids)
    assert platform.duplicates() == {}
    assert len(platform.requests_to(SMS_PATH)) >= 4  # three refused, then at least one taken


def test_429_with_retry_after_is_honoured_and_the_message_delivered(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    platform.fail_next(1, status=429, retry_after=1)
    started = time.monotonic()
    message_id = send(
        demo, f"/v1/users/{DEMO_ID}/message/whatsapp", {"content": {"text": "After a 429"}}
    )

    def refused_once() -> dict[str, Any] | None:
        body = message(demo, message_id)
        return body if body["attempts"] >= 1 and body["status"]["groupId"] == 1 else None

    pending = wait_until(refused_once, what="the 429 to be recorded")
    assert pending["error"]["httpStatus"] == 429
    assert pending["error"]["id"] == "TOO_MANY_REQUESTS"

    final = wait_for_final(demo, message_id, timeout=15)
    elapsed = time.monotonic() - started

    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["attempts"] == 2
    assert elapsed >= 1.0  # Retry-After: 1 is a floor for the retry
    assert len(platform.requests_to(WHATSAPP_TEXT_PATH)) == 2
    assert received_once(platform, message_id).sender == WHATSAPP_SENDER
    assert platform.duplicates() == {}


# --- 4. permanent rejections ---------------------------------------------------------------


def test_sms_destination_infobip_rejects_ends_rejected_with_its_reason(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    number = unique_phone()
    platform.reject_destination(number)

    final = wait_for_final(demo, send(demo, "/v1/apps/message/sms", sms_to(number)), timeout=15)

    assert final["status"]["groupName"] == "REJECTED"
    assert final["status"]["name"] == "REJECTED_DESTINATION"
    assert final["error"]["name"] == "REJECTED_DESTINATION"
    assert final["error"]["description"] == "Destination rejected"
    assert final["error"]["action"] == "Check the destination address."
    assert final["error"]["permanent"] is True
    assert final["attempts"] == 1
    assert history(final) == ["PENDING_ACCEPTED", "REJECTED_DESTINATION"]
    time.sleep(0.2)  # no report may come for it
    assert platform.reports == []


def test_whatsapp_400_for_a_person_ends_rejected_with_infobips_text(
    api: httpx.Client, tenant_fake: FakeInfobip, platform: FakeInfobip
) -> None:
    extension = enable_extension(api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY)
    person = make_person(api)
    phone = person["person"]["contactInformation"]["phone"][0]["number"]
    open_whatsapp_window(
        api, extension["webhooks"]["inbound"], customer=phone, business=extension["whatsappSender"]
    )
    tenant_fake.reject_destination(phone)

    message_id = send(
        api, f"/v1/identities/{person['id']}/person/message/whatsapp", {"content": {"text": "Hi"}}
    )
    final = wait_for_final(api, message_id, timeout=15)

    assert final["status"]["groupName"] == "REJECTED"
    assert final["error"]["httpStatus"] == 400
    assert final["error"]["description"] == "Invalid destination address"
    assert final["error"]["violations"] == [
        {"property": "to", "violation": f"invalid destination address: {phone}"}
    ]
    assert final["error"]["permanent"] is True
    assert final["attempts"] == 1
    assert len(tenant_fake.requests_to(WHATSAPP_TEXT_PATH)) == 1
    assert platform.received == []


# --- 5. delivery reports -------------------------------------------------------------------


# A final status Infobip may report late, after a message was already delivered.
REJECTED_NETWORK = {
    "groupId": 5,
    "groupName": "REJECTED",
    "id": 6,
    "name": "REJECTED_NETWORK",
    "description": "Network is forbidden",
}


def test_duplicate_late_and_unknown_reports_never_move_a_final_status(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    message_id = send(demo, "/v1/apps/message/sms", sms_to(unique_phone()))
    assert wait_for_final(demo, message_id, timeout=15)["status"]["groupName"] == "DELIVERED"
    url, report = posted_report(platform, message_id)
    delivered = message(demo, message_id)

    duplicate = demo.post(url, json={"results": [report]})
    late = {
        "results": [
            {**report, "status": REJECTED_NETWORK},
            {
                **report,
                "status": {
                    "groupId": 1,
                    "groupName": "PENDING",
                    "id": 7,
                    "name": "PENDING_ENROUTE",
                    "description": "Message sent to next instance",
                },
            },
        ]
    }
    out_of_order = demo.post(url, json=late)
    unknown = demo.post(url, json={"results": [{**report, "messageId": "no-such-message-1"}]})
    token = url.split("/")[-2]
    wrong_token = demo.post(url.replace(token, token[:-4] + "xxxx"), json={"results": [report]})

    assert duplicate.status_code == 200, duplicate.text
    assert duplicate.json() == {"received": 1, "applied": 0, "unknown": 0}
    assert out_of_order.status_code == 200, out_of_order.text
    assert out_of_order.json() == {"received": 2, "applied": 0, "unknown": 0}
    assert unknown.status_code == 200, unknown.text
    assert unknown.json() == {"received": 1, "applied": 0, "unknown": 1}
    assert wrong_token.status_code == 401
    assert wrong_token.json()["code"] == "invalid_webhook_token"
    after = message(demo, message_id)
    assert after["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert after["history"] == delivered["history"]
    assert after["doneAt"] == delivered["doneAt"]


def test_a_tenants_webhook_cannot_report_on_messages_it_did_not_send(
    demo: httpx.Client, platform: FakeInfobip, demo_extension: dict[str, Any]
) -> None:
    # A platform message (sent through the operator's account), reported on the URL of the
    # demo tenant's own Infobip account: not the tenant's to report on.
    message_id = send(demo, "/v1/apps/message/sms", sms_to(unique_phone()))
    assert wait_for_final(demo, message_id, timeout=15)["status"]["groupName"] == "DELIVERED"
    platform_url, report = posted_report(platform, message_id)
    delivered = message(demo, message_id)
    rejected = {**report, "status": REJECTED_NETWORK}

    tenant_url = demo_extension["webhooks"]["deliveryReports"]
    answer = demo.post(tenant_url, json={"results": [rejected]})

    assert tenant_url != platform_url
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "applied": 0, "unknown": 1}
    assert message(demo, message_id)["history"] == delivered["history"]


def test_a_report_that_overtakes_infobips_answer_still_delivers(
    demo: httpx.Client, platform: FakeInfobip
) -> None:
    # Infobip answers the send late: its delivery report reaches Pigeon before the answer does.
    platform.delay_next(1, seconds=0.6)
    message_id = send(demo, "/v1/apps/message/sms", sms_to(unique_phone()))
    posted_report(platform, message_id)

    def answer_recorded() -> dict[str, Any] | None:
        body = message(demo, message_id)
        return body if body["providerMessageId"] else None

    final = wait_until(answer_recorded, what="the late answer to be recorded")

    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["providerMessageId"] == message_id
    assert final["attempts"] == 1
    assert history(final) == ["PENDING_ACCEPTED", "DELIVERED_TO_HANDSET"]
    assert platform.duplicates() == {}


def test_platform_reports_are_accepted_on_a_fresh_server(
    tmp_path: Path, databases: Databases, platform: FakeInfobip
) -> None:
    """Nobody ran `pigeon webhooks` or received a webhook yet: the first send sets the URL."""
    server = make_server(tmp_path, **infobip_env(free_port(), platform.base_url))
    server.start()
    try:
        with server.client(DEMO_KEY) as client:
            message_id = send(client, "/v1/apps/message/sms", sms_to(unique_phone()))
            wait_until(lambda: platform.reports, what="the delivery report POST")
            final = wait_for_final(client, message_id, timeout=5)
        urls = dict(line.split(": ", 1) for line in server.cli("webhooks").splitlines())
    finally:
        server.stop()

    [posted] = platform.reports
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET", final["status"]
    assert posted.http_status == 200, posted
    assert posted.url == urls["delivery_reports"]


# --- 6. WhatsApp: inbound windows and templates --------------------------------------------


def test_inbound_on_the_tenants_url_opens_the_window_for_the_tenants_number(
    api: httpx.Client, tenant_fake: FakeInfobip, platform: FakeInfobip
) -> None:
    extension = enable_extension(
        api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY, whatsappSender="447860011223"
    )
    person = make_person(api)
    phone = person["person"]["contactInformation"]["phone"][0]["number"]
    path = f"/v1/identities/{person['id']}/person/message/whatsapp"
    before = api.post(path, json={"content": {"text": "Too early"}})
    assert before.status_code == 422
    assert before.json()["code"] == "whatsapp_no_interaction"

    open_whatsapp_window(
        api, extension["webhooks"]["inbound"], customer=phone, business="+447860011223"
    )
    message_id = send(api, path, {"content": {"text": "Thanks for writing"}})
    final = wait_for_final(api, message_id, timeout=15)

    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    sent = received_once(tenant_fake, message_id)
    assert (sent.channel, sent.to, sent.sender, sent.text) == (
        "whatsapp",
        phone,
        "447860011223",
        "Thanks for writing",
    )
    assert platform.received == []
    # The window is the tenant number's: the platform's number has still not been written to.
    user = make_user(api, phone=phone)
    as_user = api.post(f"/v1/users/{user['id']}/message/whatsapp", json={"content": {"text": "Hi"}})
    assert as_user.status_code == 422
    assert as_user.json()["code"] == "whatsapp_no_interaction"


def test_template_goes_out_after_the_window_closed_but_free_text_does_not(
    api: httpx.Client, platform: FakeInfobip, platform_webhooks: dict[str, str]
) -> None:
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    path = f"/v1/users/{user['id']}/message/whatsapp"
    template = {"template": {"name": "welcome", "language": "en", "placeholders": ["Ana"]}}
    never_wrote = api.post(path, json={"content": template})
    assert never_wrote.status_code == 422
    assert never_wrote.json()["code"] == "whatsapp_no_interaction"
    long_ago = infobip_time(datetime.now(UTC) - timedelta(hours=25))
    open_whatsapp_window(
        api,
        platform_webhooks["inbound"],
        customer=phone,
        business=WHATSAPP_SENDER,
        received_at=long_ago,
    )

    free_text = api.post(path, json={"content": {"text": "Free text"}})
    message_id = send(api, path, {"content": template})
    final = wait_for_final(api, message_id, timeout=15)

    assert free_text.status_code == 422
    assert free_text.json()["code"] == "whatsapp_window_closed"
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["content"] == template
    [request] = platform.requests_to(WHATSAPP_TEMPLATE_PATH)
    assert request.headers["authorization"] == f"App {PLATFORM_KEY}"
    [sent] = request.body["messages"]
    assert sent["from"] == WHATSAPP_SENDER
    assert sent["to"] == phone
    assert sent["messageId"] == message_id
    assert sent["content"] == {
        "templateName": "welcome",
        "templateData": {"body": {"placeholders": ["Ana"]}},
        "language": "en",
    }
    assert sent["notifyUrl"] == platform_webhooks["delivery_reports"]
    assert platform.requests_to(WHATSAPP_TEXT_PATH) == []


# --- 7. CDP sync ---------------------------------------------------------------------------


def test_person_is_synced_to_the_tenants_people_and_updates_follow(
    api: httpx.Client, tenant_fake: FakeInfobip, platform: FakeInfobip
) -> None:
    enable_extension(api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY)
    person = make_person(api)
    phone = person["person"]["contactInformation"]["phone"][0]["number"]
    email = person["person"]["contactInformation"]["email"][0]["address"]

    synced = sync_settled(api, person["id"])

    assert synced["sync"]["state"] == "synced", synced
    assert synced["sync"]["error"] is None
    assert synced["sync"]["syncedAt"] is not None
    stored = tenant_fake.persons[person["id"]]
    assert stored["externalId"] == person["id"]
    assert (stored["firstName"], stored["lastName"]) == ("Ivo", "Ivić")
    assert stored["contactInformation"] == {
        "phone": [{"number": phone}],
        "email": [{"address": email}],
    }
    assert {r.headers["authorization"] for r in tenant_fake.received} == {f"App {TENANT_KEY}"}

    new_phone = unique_phone()
    patched = api.patch(
        f"/v1/identities/{person['id']}",
        json={
            "person": {
                "lastName": "Horvat",
                "contactInformation": {
                    "phone": [{"number": new_phone}],
                    "email": [{"address": email}],
                },
            }
        },
    )
    assert patched.status_code == 200, patched.text
    resynced = sync_settled(api, person["id"])

    assert resynced["sync"]["state"] == "synced", resynced
    assert resynced["sync"]["syncedAt"] >= synced["sync"]["syncedAt"]
    stored = tenant_fake.persons[person["id"]]
    assert (stored["firstName"], stored["lastName"]) == ("Ivo", "Horvat")
    assert stored["contactInformation"]["phone"] == [{"number": new_phone}]
    assert len(tenant_fake.persons) == 1
    assert platform.received == []


def test_sync_survives_a_500_from_people(api: httpx.Client, tenant_fake: FakeInfobip) -> None:
    enable_extension(api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY)
    tenant_fake.fail_next(1, status=500)

    person = make_person(api)
    synced = sync_settled(api, person["id"])

    assert synced["sync"]["state"] == "synced", synced
    assert synced["sync"]["error"] is None
    assert person["id"] in tenant_fake.persons
    assert len(tenant_fake.requests_to(PERSONS_PATH)) >= 3  # the 500, then PUT 404 and POST


def test_sync_with_a_wrong_api_key_fails_with_infobips_error(
    api: httpx.Client, tenant_fake: FakeInfobip
) -> None:
    enable_extension(api, baseUrl=tenant_fake.base_url, apiKey="not-the-tenants-key")

    person = make_person(api)
    settled = sync_settled(api, person["id"])

    assert settled["sync"]["state"] == "failed", settled
    assert settled["sync"]["error"]["id"] == "E401"
    assert settled["sync"]["error"]["permanent"] is True
    assert settled["sync"]["syncedAt"] is None
    assert tenant_fake.persons == {}


# --- 8. secrets ----------------------------------------------------------------------------


def test_the_extension_key_is_never_shown_logged_or_stored_in_clear(
    pigeon: Server, api: httpx.Client, tenant_fake: FakeInfobip
) -> None:
    put = enable_extension(api, baseUrl=tenant_fake.base_url, apiKey=TENANT_KEY)
    got = api.get("/v1/extensions/infobip")
    # Use the key for real, so a careless log line about the call would show it.
    person = make_person(api)
    message_id = send(
        api, f"/v1/identities/{person['id']}/person/message/sms", {"content": {"text": "Hi"}}
    )
    assert wait_for_final(api, message_id, timeout=15)["status"]["groupName"] == "DELIVERED"
    assert sync_settled(api, person["id"])["sync"]["state"] == "synced"

    assert got.status_code == 200
    assert put["apiKey"] == got.json()["apiKey"] == "****" + TENANT_KEY[-4:]
    assert TENANT_KEY not in got.text
    log = pigeon.log_path.read_text()
    assert "batch sent" in log  # the log is the server's, and it is being written
    for secret in (TENANT_KEY, PLATFORM_KEY, SECRET_KEY):
        assert secret not in log
    stored = stored_api_keys(pigeon)
    account_ids = list(stored)
    assert len(account_ids) >= 2  # the demo tenant's and this one's, at least
    for value in stored.values():
        assert value.startswith("fernet:v1:")
        assert TENANT_KEY not in value
    url = pigeon.env["PIGEON_DATABASE_URL"]
    if url.startswith("sqlite:///"):  # the file itself (and its WAL) never holds it either
        database = Path(url.removeprefix("sqlite:///"))
        files = list(database.parent.glob(database.name + "*"))
        assert database in files
        for part in files:
            assert TENANT_KEY.encode() not in part.read_bytes(), part


def test_without_a_secret_key_provider_credentials_are_refused(
    tmp_path: Path, databases: Databases
) -> None:
    server = make_server(tmp_path, PIGEON_DEMO="0")
    server.env.pop("PIGEON_SECRET_KEY", None)  # the suite sets one on PostgreSQL
    server.start()
    try:
        with server.client(create_tenant(server).api_key) as client:
            response = client.put(
                "/v1/extensions/infobip",
                json={"baseUrl": "https://x.api.infobip.com", "apiKey": TENANT_KEY},
            )
            after = client.get("/v1/extensions/infobip")
    finally:
        server.stop()

    assert response.status_code == 503, response.text
    assert response.json()["code"] == "secret_key_not_configured"
    assert TENANT_KEY not in response.text
    assert after.status_code == 404


# --- 9. the CLI's webhook URLs -------------------------------------------------------------


def test_cli_webhooks_prints_urls_under_the_public_url(
    pigeon: Server, platform_webhooks: dict[str, str]
) -> None:
    public = pigeon.env["PIGEON_PUBLIC_URL"]
    reports, inbound = platform_webhooks["delivery_reports"], platform_webhooks["inbound"]

    assert set(platform_webhooks) == {"delivery_reports", "inbound"}
    assert reports.startswith(f"{public}/v1/webhooks/infobip/platform/")
    assert reports.endswith("/reports")
    assert inbound.startswith(f"{public}/v1/webhooks/infobip/platform/")
    assert inbound.endswith("/inbound")
    assert reports.removesuffix("/reports") == inbound.removesuffix("/inbound")
    # Both answer: an empty batch is fine for each.
    with httpx.Client() as client:
        assert client.post(reports, json={"results": []}).status_code == 200
        assert client.post(inbound, json={"results": []}).status_code == 200
