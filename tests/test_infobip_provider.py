"""The Infobip adapter against the fake Infobip, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest

from pigeon.messages import status
from pigeon.messages.status import status_for
from pigeon.providers.base import Outbound, PermanentError, SendOutcome, TransientError
from pigeon.providers.infobip import (
    EMAIL_PATH,
    PERSONS_PATH,
    SMS_PATH,
    WHATSAPP_TEMPLATE_PATH,
    WHATSAPP_TEXT_PATH,
    InfobipAccount,
    InfobipProvider,
    parse_error,
    parse_retry_after,
)
from pigeon.webhooks.schemas import DeliveryReports
from tests.fakes.infobip import FakeInfobip, ReportSink, infobip_models

API_KEY = "test-secret-key"
# Loopback, nothing listening: reports the fake posts there fail fast and go nowhere.
NOTIFY_URL = "http://127.0.0.1:9/dlr"
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Built once: every AsyncClient would otherwise load the CA bundle again (~70 ms each).
TLS = ssl.create_default_context()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeInfobip]:
    with FakeInfobip(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeInfobip) -> FakeInfobip:
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="module")
def sink() -> Iterator[ReportSink]:
    with ReportSink() as receiver:
        yield receiver


def run(
    fake: FakeInfobip,
    action: Callable[[InfobipProvider], Awaitable[T]],
    *,
    api_key: str = API_KEY,
    notify_url: str | None = NOTIFY_URL,
    timeout: float = 2.0,
) -> T:
    """Run one provider call on a fresh event loop and AsyncClient."""

    async def go() -> T:
        async with httpx.AsyncClient(timeout=timeout, verify=TLS) as client:
            account = InfobipAccount(
                base_url=fake.base_url,
                api_key=api_key,
                sms_sender="Pigeon",
                whatsapp_sender="447860099299",
                email_sender="Pigeon <noreply@pigeon.test>",
                notify_url=notify_url,
            )
            return await action(InfobipProvider(account, client))

    return asyncio.run(go())


def send(fake: FakeInfobip, batch: list[Outbound], **kwargs: Any) -> list[SendOutcome]:
    return run(fake, lambda provider: provider.send(batch), **kwargs)


def sms(message_id: str, to: str = "41793026727", text: str = "Hello") -> Outbound:
    return Outbound(message_id, "acc-1", "sms", to, "Pigeon", {"text": text}, "infobip")


def whatsapp(message_id: str, to: str = "41793026727", **content: Any) -> Outbound:
    return Outbound(
        message_id, "acc-1", "whatsapp", to, "447860099299", content or {"text": "Hi"}, "infobip"
    )


def email(message_id: str, to: str = "ana@example.com", **content: Any) -> Outbound:
    content = content or {"subject": "Hello", "text": "Plain"}
    return Outbound(
        message_id, "acc-1", "email", to, "Pigeon <noreply@pigeon.test>", content, "infobip"
    )


# --- SMS ---------------------------------------------------------------------------------


def test_sms_batch_is_one_request_carrying_our_message_ids(fake: FakeInfobip) -> None:
    batch = [sms(str(1000 + i), to=f"4179302{i:04d}", text=f"Hello {i}") for i in range(25)]

    outcomes = send(fake, batch)

    assert len(fake.requests_to(SMS_PATH)) == 1
    request = fake.requests_to(SMS_PATH)[0]
    assert request.headers["authorization"] == f"App {API_KEY}"
    assert request.headers["accept"] == "application/json"
    assert [(m.message_id, m.to, m.text, m.sender) for m in fake.sms_messages] == [
        (m.message_id, m.destination, m.content["text"], "Pigeon") for m in batch
    ]
    assert [o.message_id for o in outcomes] == [m.message_id for m in batch]
    for outcome in outcomes:
        assert outcome.status == status.ACCEPTED
        assert outcome.provider_message_id == outcome.message_id
        assert outcome.raw["messageId"] == outcome.message_id
        assert outcome.call is not None
        assert outcome.call.http_status == 200
        assert not outcome.transient
        assert outcome.error is None
    assert fake.duplicates() == {}


def test_sms_body_and_answer_match_infobips_published_models(fake: FakeInfobip) -> None:
    outcomes = send(fake, [sms("1"), sms("2", to="41793026728")], notify_url=NOTIFY_URL)

    body = fake.requests_to(SMS_PATH)[0].body
    model = infobip_models.SmsRequest.from_dict(body)
    assert model.to_dict() == body  # nothing we send is unknown to Infobip's model
    message = body["messages"][0]
    assert message == {
        "destinations": [{"to": "41793026727", "messageId": "1"}],
        "content": {"text": "Hello"},
        "sender": "Pigeon",
        "webhooks": {
            "delivery": {"url": NOTIFY_URL},
            "contentType": "application/json",
        },
    }
    assert outcomes[0].call is not None
    answer = infobip_models.SmsResponse.from_dict(json.loads(outcomes[0].call.body))
    assert [m.message_id for m in answer.messages] == ["1", "2"]


def test_sms_without_notify_url_asks_for_no_webhook(fake: FakeInfobip) -> None:
    send(fake, [sms("1")], notify_url=None)

    assert "webhooks" not in fake.requests_to(SMS_PATH)[0].body["messages"][0]


def test_sms_destination_rejected_in_a_200_answer_is_final(fake: FakeInfobip) -> None:
    fake.reject_destination("41790000005")

    outcomes = send(fake, [sms("1"), sms("2", to="41790000005"), sms("3", to="41793026729")])

    assert [o.status for o in outcomes] == [status.ACCEPTED, status.REJECTED, status.ACCEPTED]
    rejected = outcomes[1]
    assert rejected.status.is_final
    assert rejected.provider_message_id == "2"
    assert rejected.error is not None
    assert rejected.error["name"] == "REJECTED_DESTINATION"
    assert rejected.error["permanent"] is True
    assert not rejected.transient


def test_sms_429_with_retry_after_is_transient_for_the_batch(fake: FakeInfobip) -> None:
    fake.fail_next(1, status=429, retry_after=2)

    with pytest.raises(TransientError) as caught:
        send(fake, [sms("1"), sms("2", to="41793026728")])

    error = caught.value
    assert error.retry_after == 2.0
    assert error.call is not None
    assert error.call.http_status == 429
    assert error.error is not None
    assert error.error["id"] == "E429"  # SMS v3 speaks the errorCode format
    assert error.error["permanent"] is False
    assert fake.sms_messages == []


def test_sms_retry_after_as_http_date(fake: FakeInfobip) -> None:
    fake.fail_next(
        1, status=503, retry_after=format_datetime(datetime.now(UTC) + timedelta(30), True)
    )

    with pytest.raises(TransientError) as caught:
        send(fake, [sms("1")])

    assert caught.value.retry_after is not None
    assert 29 * 86400 < caught.value.retry_after <= 30 * 86400


@pytest.mark.parametrize("http_status", [500, 502, 503])
def test_sms_5xx_is_transient(fake: FakeInfobip, http_status: int) -> None:
    fake.fail_next(1, status=http_status)

    with pytest.raises(TransientError) as caught:
        send(fake, [sms("1")])

    assert caught.value.call is not None
    assert caught.value.call.http_status == http_status
    assert caught.value.retry_after is None


def test_sms_timeout_is_transient_though_infobip_may_have_taken_it(fake: FakeInfobip) -> None:
    fake.delay_next(1, seconds=1.0)

    with pytest.raises(TransientError) as caught:
        send(fake, [sms("1")], timeout=0.2)

    assert "timeout" in caught.value.reason
    assert caught.value.call is not None
    assert caught.value.call.http_status is None
    # The fake, like Infobip, accepted it: a blind retry would send it twice.
    assert [m.message_id for m in fake.sms_messages] == ["1"]


def test_sms_dropped_connection_is_transient(fake: FakeInfobip) -> None:
    fake.drop_next(1)

    with pytest.raises(TransientError) as caught:
        send(fake, [sms("1")])

    assert "connection error" in caught.value.reason
    assert len(fake.requests_to(SMS_PATH)) == 1
    assert fake.sms_messages == []


def test_sms_400_is_permanent_with_infobips_text(fake: FakeInfobip) -> None:
    fake.fail_next(1, status=400)

    with pytest.raises(PermanentError) as caught:
        send(fake, [sms("1")])

    assert "Request cannot be processed." in caught.value.reason
    assert caught.value.error is not None
    assert caught.value.error["id"] == "E400"
    assert caught.value.error["permanent"] is True
    assert caught.value.error["action"] == "Check the syntax, violations and adjust the request."


def test_sms_wrong_api_key_is_permanent(fake: FakeInfobip) -> None:
    with pytest.raises(PermanentError) as caught:
        send(fake, [sms("1")], api_key="wrong")

    assert "credentials" in caught.value.reason
    assert caught.value.call is not None
    assert caught.value.call.http_status == 401
    assert caught.value.error is not None
    assert caught.value.error["id"] == "E401"


def test_resending_a_message_shows_as_a_duplicate(fake: FakeInfobip) -> None:
    send(fake, [sms("77")])
    send(fake, [sms("77")])

    assert fake.duplicates() == {"77": 2}


def test_a_batch_must_hold_one_channel(fake: FakeInfobip) -> None:
    assert send(fake, []) == []
    with pytest.raises(ValueError, match="one channel"):
        send(fake, [sms("1"), whatsapp("2")])
    assert fake.received == []


# --- WhatsApp ----------------------------------------------------------------------------


def test_whatsapp_text_is_one_request_per_message(fake: FakeInfobip) -> None:
    batch = [whatsapp(str(i), to=f"4179302{i:04d}", text=f"Hi {i}") for i in range(20)]

    outcomes = send(fake, batch, notify_url=NOTIFY_URL)

    requests = fake.requests_to(WHATSAPP_TEXT_PATH)
    assert len(requests) == 20
    assert sorted(r.body["messageId"] for r in requests) == sorted(m.message_id for m in batch)
    assert requests[0].body.keys() == {"from", "to", "messageId", "content", "notifyUrl"}
    by_id = {r.body["messageId"]: r.body for r in requests}
    assert by_id["3"] == {
        "from": "447860099299",
        "to": "41793020003",
        "messageId": "3",
        "content": {"text": "Hi 3"},
        "notifyUrl": NOTIFY_URL,
    }
    assert [o.message_id for o in outcomes] == [m.message_id for m in batch]
    assert all(o.status == status.ENROUTE for o in outcomes)
    assert all(o.provider_message_id == o.message_id for o in outcomes)


def test_whatsapp_template_uses_infobips_template_body(fake: FakeInfobip) -> None:
    template = {"name": "order_shipped", "language": "en", "placeholders": ["Ana", "A-17"]}

    [outcome] = send(fake, [whatsapp("9", template=template)], notify_url=NOTIFY_URL)

    [request] = fake.requests_to(WHATSAPP_TEMPLATE_PATH)
    assert request.body == {
        "messages": [
            {
                "from": "447860099299",
                "to": "41793026727",
                "messageId": "9",
                "content": {
                    "templateName": "order_shipped",
                    "templateData": {"body": {"placeholders": ["Ana", "A-17"]}},
                    "language": "en",
                },
                "notifyUrl": NOTIFY_URL,
            }
        ]
    }
    assert outcome.status == status.ENROUTE
    assert outcome.provider_message_id == "9"
    assert fake.whatsapp_messages[0].extra["templateName"] == "order_shipped"


def test_whatsapp_failures_are_per_message(fake: FakeInfobip) -> None:
    fake.fail_next(1, status=429, retry_after=3)

    outcomes = send(fake, [whatsapp("1"), whatsapp("2", to="41793026728")])

    [failed] = [o for o in outcomes if o.transient]
    [sent] = [o for o in outcomes if not o.transient]
    assert failed.status == status.ACCEPTED
    assert failed.retry_after == 3.0
    assert failed.error is not None
    assert failed.error["id"] == "TOO_MANY_REQUESTS"  # WhatsApp speaks requestError
    assert failed.call is not None
    assert failed.call.http_status == 429
    assert sent.status == status.ENROUTE


def test_whatsapp_rejected_destination_is_rejected_with_infobips_words(fake: FakeInfobip) -> None:
    fake.reject_destination("41790000005")

    [outcome] = send(fake, [whatsapp("1", to="41790000005")])

    assert outcome.status == status.REJECTED
    assert not outcome.transient
    assert outcome.error is not None
    assert outcome.error["id"] == "BAD_REQUEST"
    assert outcome.error["description"] == "Invalid destination address"
    assert outcome.error["permanent"] is True
    assert outcome.error["violations"] == [
        {"property": "to", "violation": "invalid destination address: 41790000005"}
    ]


def test_whatsapp_wrong_key_rejects_each_message(fake: FakeInfobip) -> None:
    outcomes = send(fake, [whatsapp("1"), whatsapp("2")], api_key="wrong")

    assert [o.status for o in outcomes] == [status.REJECTED, status.REJECTED]
    assert all(o.error is not None and o.error["id"] == "UNAUTHORIZED" for o in outcomes)


def test_whatsapp_without_any_sender_is_rejected_without_a_call(fake: FakeInfobip) -> None:
    message = Outbound("1", "acc-1", "whatsapp", "41793026727", None, {"text": "Hi"}, "infobip")

    async def go() -> list[SendOutcome]:
        async with httpx.AsyncClient(verify=TLS) as client:
            account = InfobipAccount(fake.base_url, API_KEY, None, None, None, None)
            return await InfobipProvider(account, client).send([message])

    [outcome] = asyncio.run(go())

    assert outcome.status == status.REJECTED_SOURCE
    assert fake.received == []


# --- Email -------------------------------------------------------------------------------


def test_email_is_multipart_with_html_and_text(fake: FakeInfobip) -> None:
    message = email("5", subject="Welcome", html="<p>Olá</p>", text="Olá")

    [outcome] = send(fake, [message], notify_url=NOTIFY_URL)

    [request] = fake.requests_to(EMAIL_PATH)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.body == {
        "from": "Pigeon <noreply@pigeon.test>",
        "to": "ana@example.com",
        "subject": "Welcome",
        "text": "Olá",
        "html": "<p>Olá</p>",
        "messageId": "5",
        "notifyUrl": NOTIFY_URL,
        "notifyContentType": "application/json",
    }
    assert outcome.status == status.ACCEPTED
    assert outcome.provider_message_id == "5"
    assert outcome.call is not None
    answer = infobip_models.EmailSendResponse.from_dict(json.loads(outcome.call.body))
    assert answer.messages[0].message_id == "5"


@pytest.mark.parametrize("failure", ["timeout", "drop", "500"])
def test_email_that_did_not_go_through_is_transient(fake: FakeInfobip, failure: str) -> None:
    if failure == "timeout":
        fake.delay_next(1, seconds=1.0)
    elif failure == "drop":
        fake.drop_next(1)
    else:
        fake.fail_next(1, status=500)

    [outcome] = send(fake, [email("5")], timeout=0.2)

    assert outcome.transient
    assert outcome.status == status.ACCEPTED
    assert outcome.error is not None
    assert outcome.error["permanent"] is False


def test_email_rejected_recipient_is_rejected(fake: FakeInfobip) -> None:
    fake.reject_destination("bounce@example.com")

    [outcome] = send(fake, [email("5", to="bounce@example.com")])

    assert outcome.status == status.REJECTED
    assert outcome.error is not None
    assert outcome.error["description"] == "Invalid destination address"


# --- delivery reports --------------------------------------------------------------------


def test_delivery_reports_are_posted_to_the_notify_url(fake: FakeInfobip, sink: ReportSink) -> None:
    sink.received.clear()
    notify = sink.url("/v1/webhooks/infobip/acc-1")

    send(fake, [sms("1"), sms("2", to="41793026728")], notify_url=notify)
    send(fake, [whatsapp("3")], notify_url=notify)
    send(fake, [email("4")], notify_url=notify)

    posted = sink.wait_for(3)
    assert [path for path, _ in posted] == ["/v1/webhooks/infobip/acc-1"] * 3
    results = [r for _, body in posted for r in body["results"]]
    assert sorted(r["messageId"] for r in results) == ["1", "2", "3", "4"]
    sms_payload = next(body for _, body in posted if body["results"][0]["messageId"] == "1")
    infobip_models.SmsDeliveryResult.from_dict(sms_payload)  # Infobip's own report model
    for _, body in posted:
        reports = msgspec.convert(body, DeliveryReports)  # what our webhook parses
        for report in reports.results:
            assert status_for(report.status.id, report.status.groupId) == status.DELIVERED
    mine = fake.wait_for_reports(3, url=notify)
    assert [r.http_status for r in mine] == [200, 200, 200]


# --- People ------------------------------------------------------------------------------


def test_upsert_person_creates_then_overwrites(fake: FakeInfobip) -> None:
    first = run(
        fake,
        lambda p: p.upsert_person(
            external_id="ident-1",
            first_name="Ana",
            last_name=None,
            phones=["+41793026727"],
            emails=["ana@example.com"],
        ),
    )
    second = run(
        fake,
        lambda p: p.upsert_person(
            external_id="ident-1",
            first_name="Ana",
            last_name="Silva",
            phones=["41793026727", "41793026728"],
            emails=[],
        ),
    )

    assert first.http_status == second.http_status == 200
    assert [r.method for r in fake.requests_to(PERSONS_PATH)] == ["PUT", "POST", "PUT"]
    put = fake.requests_to(PERSONS_PATH)[2]
    assert put.query == {"identifier": "ident-1", "type": "EXTERNAL_ID"}
    person = fake.persons["ident-1"]
    assert person["firstName"] == "Ana"
    assert person["lastName"] == "Silva"
    assert person["contactInformation"] == {
        "phone": [{"number": "41793026727"}, {"number": "41793026728"}],
        "email": [],
    }


def test_upsert_person_errors_follow_the_same_rules(fake: FakeInfobip) -> None:
    def upsert(provider: InfobipProvider) -> Awaitable[Any]:
        return provider.upsert_person(
            external_id="ident-2", first_name=None, last_name=None, phones=[], emails=[]
        )

    fake.fail_next(1, status=429, retry_after=1)
    with pytest.raises(TransientError) as transient:
        run(fake, upsert)
    with pytest.raises(PermanentError) as permanent:
        run(fake, upsert, api_key="wrong")

    assert transient.value.retry_after == 1.0
    assert permanent.value.error is not None
    assert permanent.value.error["id"] == "E401"
    assert fake.persons == {}


# --- error parsing -----------------------------------------------------------------------


def test_parse_error_reads_the_legacy_format() -> None:
    body = {
        "requestError": {
            "serviceException": {
                "messageId": "BAD_REQUEST",
                "text": "Bad request",
                "validationErrors": {"content.text": ["must not be blank", "size too big"]},
            }
        }
    }

    assert parse_error(body, 400) == {
        "provider": "infobip",
        "raw": body,
        "id": "BAD_REQUEST",
        "name": "BAD_REQUEST",
        "description": "Bad request",
        "permanent": True,
        "violations": [
            {"property": "content.text", "violation": "must not be blank"},
            {"property": "content.text", "violation": "size too big"},
        ],
    }


def test_parse_error_reads_the_errorcode_format() -> None:
    body = {
        "errorCode": "E400",
        "description": "Request cannot be processed.",
        "action": "Check the syntax, violations and adjust the request.",
        "violations": [{"property": "messages[0].destinations", "violation": "must not be empty"}],
        "resources": [{"name": "API documentation", "url": "https://www.infobip.com/docs/api"}],
    }

    error = parse_error(body, 400)

    assert error["id"] == "E400"
    assert error["name"] == "BAD_REQUEST"
    assert error["description"] == "Request cannot be processed."
    assert error["violations"] == body["violations"]
    assert error["action"] == body["action"]
    assert error["resources"] == body["resources"]
    assert error["permanent"] is True


def test_parse_error_never_repeats_a_body_it_does_not_recognise() -> None:
    for body in (None, {"internal": "secret"}, ["a"], "<html>Bad Gateway</html>"):
        error = parse_error(body, 502)

        assert error["id"] == "BAD_GATEWAY"
        assert error["description"] == "HTTP 502 Bad Gateway, not an Infobip error answer"
        assert "secret" not in str(error)
        assert error["permanent"] is False


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


# --- the fake's own strictness -----------------------------------------------------------


def test_fake_refuses_what_infobip_refuses(fake: FakeInfobip) -> None:
    auth = {"Authorization": f"App {API_KEY}"}
    with httpx.Client(base_url=fake.base_url, verify=TLS) as client:
        unknown = client.post("/sms/9/nothing", json={}, headers=auth)
        no_key = client.post(SMS_PATH, json={"messages": []})
        typo = client.post(
            SMS_PATH,
            headers=auth,
            json={
                "messages": [
                    {"destinations": [{"to": "4179"}], "content": {"text": "x"}, "snder": "P"}
                ]
            },
        )
        no_content = client.post(
            WHATSAPP_TEXT_PATH, headers=auth, json={"from": "4478", "to": "4179"}
        )
        not_multipart = client.post(EMAIL_PATH, headers=auth, json={"to": "a@b.c"})

    assert unknown.status_code == 404
    assert no_key.status_code == 401
    assert no_key.json()["errorCode"] == "E401"
    assert typo.status_code == 400
    assert {"property": "messages[0].snder", "violation": "unknown property"} in typo.json()[
        "violations"
    ]
    assert no_content.status_code == 400
    assert no_content.json()["requestError"]["serviceException"]["validationErrors"] == {
        "content": ["must not be null"]
    }
    assert not_multipart.status_code == 400
    assert "requestError" in not_multipart.json()
    assert fake.messages == []


def test_fake_runs_as_its_own_process(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.infobip", "--port", str(port), "--api-key", "k"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "fake.log").open("wb"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base, process)
        with httpx.Client(base_url=base, verify=TLS) as client:
            client.post("/__fake/fail-next", json={"n": 1, "status": 503})
            failed = client.post("/sms/3/messages", headers={"Authorization": "App k"}, json={})
            state = client.get("/__fake/state").json()
        assert failed.status_code == 503
        assert state["received"][0]["path"] == "/sms/3/messages"
    finally:
        process.terminate()
        process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the fake exited")
        try:
            httpx.get(f"{base}/__fake/state", timeout=0.5, verify=TLS)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("the fake did not come up")
