"""SMS and WhatsApp through Twilio: a real `pigeon serve` against a strict fake Twilio.

The fake checks basic auth and every form field, answers in Twilio's JSON and error formats,
and posts status callbacks signed with the official `twilio` package's RequestValidator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from pigeon.messages.schemas import CHANNELS
from pigeon.providers.base import Outbound
from pigeon.providers.twilio import TwilioAccount, TwilioProvider
from tests.conftest import DEMO_ID, Server, free_port, make_server, wait_for_final
from tests.databases import Databases
from tests.factories import create_tenant, open_whatsapp_window, unique_phone
from tests.fakes.twilio import FakeTwilio, SentMessage

ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "twilio-auth-token-9d2f41"
SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
PLATFORM_WHATSAPP = "447860088593"


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, report_delay=0.05) as fake:
        yield fake


def twilio_env(port: int, twilio_url: str) -> dict[str, str]:
    return {
        "PIGEON_PORT": str(port),
        "PIGEON_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PIGEON_SMS_PROVIDERS": "twilio",
        "PIGEON_WHATSAPP_PROVIDERS": "twilio",
        "PIGEON_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "PIGEON_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PIGEON_TWILIO_BASE_URL": twilio_url,
        "PIGEON_TWILIO_SMS_FROM": SMS_FROM,
        "PIGEON_TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
        "PIGEON_WHATSAPP_SENDER": PLATFORM_WHATSAPP,
    }


@pytest.fixture(scope="module")
def pigeon(
    tmp_path_factory: pytest.TempPathFactory, databases: Databases, twilio_server: FakeTwilio
) -> Iterator[Server]:
    srv = make_server(
        tmp_path_factory.mktemp("pigeon-twilio"),
        **twilio_env(free_port(), twilio_server.base_url),
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def twilio(twilio_server: FakeTwilio) -> FakeTwilio:
    twilio_server.reset()
    return twilio_server


@pytest.fixture
def api(pigeon: Server) -> Iterator[httpx.Client]:
    with pigeon.client(create_tenant(pigeon).api_key) as client:
        yield client


def send(api: httpx.Client, channel: str, to: str, text: str = "Hello via Twilio") -> str:
    response = api.post(f"/v1/apps/message/{channel}", json={"to": to, "content": {"text": text}})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


def sent_to(twilio: FakeTwilio, to: str, timeout: float = 10.0) -> SentMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in twilio.messages if m.to == to]
        if found:
            assert len(found) == 1, f"{to} got {len(found)} messages"
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"Twilio never got a message for {to}")


def wait_for_attempts(
    api: httpx.Client, message_id: str, outcomes: list[str], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(f"/v1/messages/{message_id}").json()
        if [a["outcome"] for a in body["deliveryAttempts"]] == outcomes:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"attempts: {body['deliveryAttempts']}")
        time.sleep(0.05)


def test_sms_goes_out_form_encoded_and_is_delivered_by_signed_callbacks(
    pigeon: Server, api: httpx.Client, twilio: FakeTwilio
) -> None:
    number = unique_phone()
    message_id = send(api, "sms", number, "Your code is 1234")

    sent = sent_to(twilio, f"+{number}")
    final = wait_for_final(api, message_id)

    token = sent.form["StatusCallback"].split("/")[-2]
    assert sent.form == {
        "To": f"+{number}",
        "From": SMS_FROM,
        "Body": "Your code is 1234",
        "StatusCallback": f"{pigeon.base_url}/v1/webhooks/twilio/platform/{token}/status",
    }
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["provider"] == "twilio"
    assert final["providerMessageId"] == sent.sid
    assert [(a["provider"], a["outcome"]) for a in final["deliveryAttempts"]] == [
        ("twilio", "accepted")
    ]
    reported = [e["detail"]["raw"] for e in final["history"] if e["source"] == "report"]
    assert [r["MessageStatus"] for r in reported] == ["sent", "delivered"]
    assert reported[-1]["MessageSid"] == sent.sid
    assert all(c.http_status == 200 for c in twilio.wait_for_callbacks(2))


def test_whatsapp_goes_out_with_whatsapp_addresses(
    pigeon: Server, api: httpx.Client, twilio: FakeTwilio
) -> None:
    number = unique_phone()
    inbound = dict(line.split(": ", 1) for line in pigeon.cli("webhooks").splitlines())["inbound"]
    open_whatsapp_window(api, inbound, customer=number, business=PLATFORM_WHATSAPP)
    message_id = send(api, "whatsapp", number, "Hi on WhatsApp")

    sent = sent_to(twilio, f"whatsapp:+{number}")
    final = wait_for_final(api, message_id)

    assert sent.form["From"] == f"whatsapp:{WHATSAPP_FROM}"
    assert sent.form["Body"] == "Hi on WhatsApp"
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["channel"] == "whatsapp"


def test_an_undelivered_callback_is_undeliverable_with_twilios_error_code(
    api: httpx.Client, twilio: FakeTwilio
) -> None:
    number = unique_phone()
    twilio.undeliverable(f"+{number}", code=30003)
    message_id = send(api, "sms", number)

    final = wait_for_final(api, message_id)

    assert final["status"]["name"] == "UNDELIVERABLE_NOT_DELIVERED"
    assert final["error"]["provider"] == "twilio"
    assert final["error"]["id"] == "30003"
    assert final["error"]["permanent"] is True
    assert final["error"]["raw"]["ErrorCode"] == "30003"


def test_a_4xx_is_a_permanent_refusal_with_twilios_code(
    api: httpx.Client, twilio: FakeTwilio
) -> None:
    number = unique_phone()
    twilio.reject_destination(f"+{number}", code=21211)
    message_id = send(api, "sms", number)

    final = wait_for_final(api, message_id)

    assert final["status"]["name"] == "REJECTED_INVALID_DESTINATION_ADDRESS"
    error = final["error"]
    assert (error["provider"], error["id"], error["httpStatus"]) == ("twilio", "21211", 400)
    assert error["description"] == f"The 'To' number +{number} is not a valid phone number."
    assert error["raw"] == {
        "code": 21211,
        "message": f"The 'To' number +{number} is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }
    assert [a["outcome"] for a in final["deliveryAttempts"]] == ["rejected"]


@pytest.mark.parametrize("failure", [429, 503])
def test_429_and_5xx_are_transient_and_retried(
    api: httpx.Client, twilio: FakeTwilio, failure: int
) -> None:
    twilio.fail_next(1, status=failure)
    number = unique_phone()
    message_id = send(api, "sms", number)

    body = wait_for_attempts(api, message_id, ["transient", "accepted"])

    first = body["deliveryAttempts"][0]
    assert first["httpStatus"] == failure
    assert first["error"]["permanent"] is False
    assert first["error"]["raw"]["status"] == failure
    assert wait_for_final(api, message_id)["status"]["name"] == "DELIVERED_TO_HANDSET"
    sent_to(twilio, f"+{number}")


def test_a_dropped_connection_is_transient(api: httpx.Client, twilio: FakeTwilio) -> None:
    twilio.drop_next(1)
    number = unique_phone()
    message_id = send(api, "sms", number)

    body = wait_for_attempts(api, message_id, ["transient", "accepted"])

    assert body["deliveryAttempts"][0]["error"]["id"] == "NO_RESPONSE"
    sent_to(twilio, f"+{number}")


# --- status callbacks: only Twilio's, signed for the URL Twilio was given -------------------


def _callback(twilio: FakeTwilio, api: httpx.Client) -> tuple[str, str, dict[str, str]]:
    """A sent message's id, its callback URL and 'delivered' parameters (not yet posted)."""
    number = unique_phone()
    twilio.report_delay = 30.0  # the fake's own callbacks come too late to matter
    try:
        message_id = send(api, "sms", number)
        sent = sent_to(twilio, f"+{number}")
        deadline = time.monotonic() + 10
        while api.get(f"/v1/messages/{message_id}").json()["status"]["id"] != 7:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        twilio.report_delay = 0.05
    return message_id, sent.form["StatusCallback"], twilio.callback_params(sent, "delivered")


def _post(url: str, params: dict[str, str], signature: str | None, **headers: str) -> int:
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return httpx.post(url, data=params, headers=headers, timeout=10).status_code


def test_forged_callbacks_are_refused(api: httpx.Client, twilio: FakeTwilio) -> None:
    message_id, url, params = _callback(twilio, api)
    validator = RequestValidator(AUTH_TOKEN)
    other_url = url.replace("/platform/", "/platform/x")

    assert _post(url, params, None) == 401
    assert (
        _post(url, params, RequestValidator("not-the-token").compute_signature(url, params)) == 401
    )
    tampered = {**params, "MessageStatus": "delivered", "To": "+15550000000"}
    assert _post(url, tampered, validator.compute_signature(url, params)) == 401
    assert _post(url, params, validator.compute_signature(other_url, params)) == 401
    assert _post(other_url, params, validator.compute_signature(other_url, params)) == 401

    assert api.get(f"/v1/messages/{message_id}").json()["status"]["name"] == "PENDING_ENROUTE"
    assert _post(url, params, validator.compute_signature(url, params)) == 200
    assert api.get(f"/v1/messages/{message_id}").json()["status"]["name"] == "DELIVERED_TO_HANDSET"


def test_the_signature_is_checked_against_the_public_url_not_the_host_header(
    api: httpx.Client, twilio: FakeTwilio
) -> None:
    message_id, url, params = _callback(twilio, api)
    validator = RequestValidator(AUTH_TOKEN)
    as_seen_by_host = url.replace("127.0.0.1", "proxy.internal")

    signed_for_host = validator.compute_signature(as_seen_by_host, params)
    assert _post(url, params, signed_for_host, Host="proxy.internal") == 401
    signed_for_public = validator.compute_signature(url, params)
    assert _post(url, params, signed_for_public, Host="proxy.internal") == 200
    assert api.get(f"/v1/messages/{message_id}").json()["status"]["name"] == "DELIVERED_TO_HANDSET"


def test_a_callback_for_an_unknown_message_is_accepted_and_changes_nothing(
    api: httpx.Client, twilio: FakeTwilio
) -> None:
    _, url, params = _callback(twilio, api)
    unknown = {**params, "MessageSid": "SM" + "f" * 32, "SmsSid": "SM" + "f" * 32}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, unknown)

    response = httpx.post(url, data=unknown, headers={"X-Twilio-Signature": signature})

    assert response.status_code == 200
    assert response.json() == {"received": 1, "applied": 0, "unknown": 1}


# --- the request Pigeon builds, for the senders one server does not exercise ------------------


def _provider(**overrides: Any) -> TwilioProvider:
    settings: dict[str, Any] = {
        "base_url": "https://api.twilio.com",
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "sms_from": None,
        "messaging_service_sid": "MG" + "1" * 32,
        "whatsapp_from": WHATSAPP_FROM,
        "status_callback": None,
        **overrides,
    }
    return TwilioProvider(TwilioAccount(**settings), httpx.AsyncClient())


def _outbound(channel: str, content: dict[str, Any]) -> Outbound:
    assert channel in CHANNELS
    return Outbound("1", DEMO_ID, channel, "385981234567", None, content, "platform")


def test_a_messaging_service_replaces_from_and_templates_go_as_content_sids() -> None:
    provider = _provider()

    sms = provider.form(_outbound("sms", {"text": "hi"}))
    template = {"name": "HX" + "a" * 32, "language": "en", "placeholders": ["Ana", "12"]}
    whatsapp = provider.form(_outbound("whatsapp", {"template": template}))

    assert sms == [
        ("To", "+385981234567"),
        ("MessagingServiceSid", "MG" + "1" * 32),
        ("Body", "hi"),
    ]
    assert whatsapp == [
        ("To", "whatsapp:+385981234567"),
        ("From", f"whatsapp:{WHATSAPP_FROM}"),
        ("ContentSid", "HX" + "a" * 32),
        ("ContentVariables", '{"1":"Ana","2":"12"}'),
    ]
    named = {"name": "order_update", "language": "en", "placeholders": []}
    assert isinstance(provider.form(_outbound("whatsapp", {"template": named})), str)
