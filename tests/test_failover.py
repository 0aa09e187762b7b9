"""Routing and failover: SMS routed Infobip first, then Twilio, both fakes over real HTTP.

The circuit is made quick for the test: it opens after 2 consecutive transient failures and
rests 2 seconds. Each test starts by sending one SMS through a healthy Infobip, which closes
Infobip's circuit whatever an earlier test left.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from pigeon.config import Settings, settings_problem
from tests.conftest import PIGEON, ROOT, Server, free_port, make_server, server_env, wait_for_final
from tests.databases import Databases
from tests.factories import create_tenant, unique_phone
from tests.fakes.infobip import FakeInfobip
from tests.fakes.twilio import FakeTwilio
from tests.test_twilio import ACCOUNT_SID, AUTH_TOKEN, SMS_FROM

INFOBIP_KEY = "failover-infobip-key-61c0"
COOLDOWN = 2.0


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeInfobip, FakeTwilio]]:
    with (
        FakeInfobip(api_key=INFOBIP_KEY, report_delay=0.05) as infobip,
        FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, report_delay=0.05) as twilio,
    ):
        yield infobip, twilio


@pytest.fixture(scope="module")
def pigeon(
    tmp_path_factory: pytest.TempPathFactory,
    databases: Databases,
    fakes: tuple[FakeInfobip, FakeTwilio],
) -> Iterator[Server]:
    infobip, twilio = fakes
    port = free_port()
    srv = make_server(
        tmp_path_factory.mktemp("pigeon-failover"),
        PIGEON_PORT=str(port),
        PIGEON_PUBLIC_URL=f"http://127.0.0.1:{port}",
        PIGEON_SMS_PROVIDERS="infobip,twilio",
        PIGEON_PROVIDER_FAILURE_THRESHOLD="2",
        PIGEON_PROVIDER_COOLDOWN_SECONDS=str(COOLDOWN),
        PIGEON_INFOBIP_BASE_URL=infobip.base_url,
        PIGEON_INFOBIP_API_KEY=INFOBIP_KEY,
        PIGEON_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        PIGEON_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        PIGEON_TWILIO_BASE_URL=twilio.base_url,
        PIGEON_TWILIO_SMS_FROM=SMS_FROM,
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def api(pigeon: Server) -> Iterator[httpx.Client]:
    with pigeon.client(create_tenant(pigeon).api_key) as client:
        yield client


@pytest.fixture
def infobip(fakes: tuple[FakeInfobip, FakeTwilio], api: httpx.Client) -> FakeInfobip:
    fakes[0].reset()
    fakes[1].reset()
    healthy = send(api)
    assert went_through(api, healthy) == [("infobip", "accepted")]
    fakes[0].reset()
    return fakes[0]


@pytest.fixture
def twilio(fakes: tuple[FakeInfobip, FakeTwilio], infobip: FakeInfobip) -> FakeTwilio:
    return fakes[1]


def send(api: httpx.Client, number: str | None = None) -> str:
    to = number or unique_phone()
    response = api.post("/v1/apps/message/sms", json={"to": to, "content": {"text": "Hi"}})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


def went_through(api: httpx.Client, message_id: str, timeout: float = 15.0) -> list[Any]:
    """(provider, outcome) of each attempt, once the message is final."""
    final = wait_for_final(api, message_id, timeout=timeout)
    assert final["status"]["groupId"] != 1, final
    return [(a["provider"], a["outcome"]) for a in final["deliveryAttempts"]]


def test_infobip_answering_503_sends_through_twilio_at_once(
    api: httpx.Client, infobip: FakeInfobip, twilio: FakeTwilio
) -> None:
    infobip.fail_next(1, status=503)
    number = unique_phone()
    message_id = send(api, number)

    final = wait_for_final(api, message_id)

    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"  # Twilio's callbacks
    assert final["provider"] == "twilio"
    first, second = final["deliveryAttempts"]
    assert (first["provider"], first["outcome"], first["httpStatus"]) == (
        "infobip",
        "transient",
        503,
    )
    assert first["error"]["provider"] == "infobip"
    assert (second["provider"], second["outcome"]) == ("twilio", "accepted")
    assert first["at"] == second["at"]  # the same dispatch round: no backoff in between
    assert final["attempts"] == 1
    assert [m.to for m in twilio.messages] == [f"+{number}"]
    assert infobip.sms_messages == []


def test_a_burst_during_an_outage_is_neither_lost_nor_sent_twice(
    api: httpx.Client, infobip: FakeInfobip, twilio: FakeTwilio
) -> None:
    infobip.fail_next(1, status=503)
    numbers = [unique_phone() for _ in range(30)]
    ids = [send(api, number) for number in numbers]

    finals = [wait_for_final(api, message_id, timeout=20) for message_id in ids]

    assert all(f["status"]["name"] == "DELIVERED_TO_HANDSET" for f in finals)
    by_infobip = [m.to for m in infobip.sms_messages]
    by_twilio = [m.to.lstrip("+") for m in twilio.messages]
    assert sorted(by_infobip + by_twilio) == sorted(numbers)  # each once, by one provider
    assert by_twilio  # the failed batch went to Twilio
    for final in finals:
        assert final["provider"] == ("twilio" if final["destination"] in by_twilio else "infobip")


def test_the_circuit_opens_probes_and_closes(
    api: httpx.Client, infobip: FakeInfobip, twilio: FakeTwilio
) -> None:
    infobip.fail_next(2, status=503)
    assert went_through(api, send(api)) == [("infobip", "transient"), ("twilio", "accepted")]
    assert went_through(api, send(api)) == [("infobip", "transient"), ("twilio", "accepted")]
    opened = time.monotonic()
    calls = len(infobip.received)

    # Open: Infobip is not even asked.
    assert went_through(api, send(api)) == [("twilio", "accepted")]
    assert len(infobip.received) == calls

    # After the cooldown one batch probes; it fails, so the circuit opens again at once.
    time.sleep(max(0.0, COOLDOWN + 0.3 - (time.monotonic() - opened)))
    infobip.fail_next(1, status=503)
    assert went_through(api, send(api)) == [("infobip", "transient"), ("twilio", "accepted")]
    reopened = time.monotonic()
    assert went_through(api, send(api)) == [("twilio", "accepted")]

    # The next probe succeeds: closed, Infobip takes the traffic again.
    time.sleep(max(0.0, COOLDOWN + 0.3 - (time.monotonic() - reopened)))
    assert went_through(api, send(api)) == [("infobip", "accepted")]
    assert went_through(api, send(api)) == [("infobip", "accepted")]


def test_a_permanent_refusal_does_not_fail_over(
    api: httpx.Client, infobip: FakeInfobip, twilio: FakeTwilio
) -> None:
    refused = unique_phone()
    infobip.reject_destination(refused)
    in_answer = send(api, refused)
    assert went_through(api, in_answer) == [("infobip", "rejected")]

    infobip.fail_next(1, status=400)
    whole_request = send(api)
    assert went_through(api, whole_request) == [("infobip", "rejected")]

    assert wait_for_final(api, in_answer)["status"]["name"] == "REJECTED_DESTINATION"
    assert wait_for_final(api, whole_request)["error"]["httpStatus"] == 400
    assert twilio.messages == []


def test_when_every_provider_fails_the_message_backs_off_and_is_sent_later(
    api: httpx.Client, infobip: FakeInfobip, twilio: FakeTwilio
) -> None:
    infobip.fail_next(1, status=503)
    twilio.fail_next(1, status=500)
    message_id = send(api)

    attempts = went_through(api, message_id)
    final = wait_for_final(api, message_id)

    assert attempts == [
        ("infobip", "transient"),
        ("twilio", "transient"),
        ("infobip", "accepted"),
    ]
    first, second, third = final["deliveryAttempts"]
    assert first["at"] == second["at"] < third["at"]
    assert final["attempts"] == 2
    assert final["provider"] == "infobip"


# --- start-up refuses routes that cannot work ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PIGEON_SMS_PROVIDERS": "smtp"}, "PIGEON_SMS_PROVIDERS: smtp cannot carry sms"),
        ({"PIGEON_EMAIL_PROVIDERS": "twilio"}, "PIGEON_EMAIL_PROVIDERS: twilio cannot carry email"),
        ({"PIGEON_WHATSAPP_PROVIDERS": "sandbox,pigeon-post"}, "unknown provider 'pigeon-post'"),
        (
            {"PIGEON_SMS_PROVIDERS": "sandbox,sandbox"},
            "PIGEON_SMS_PROVIDERS: sandbox is listed twice",
        ),
        (
            {"PIGEON_WHATSAPP_PROVIDERS": "twilio", "PIGEON_TWILIO_ACCOUNT_SID": "AC1"},
            "PIGEON_WHATSAPP_PROVIDERS: twilio needs PIGEON_TWILIO_AUTH_TOKEN, "
            "PIGEON_TWILIO_WHATSAPP_FROM",
        ),
        ({"PIGEON_EMAIL_PROVIDERS": "smtp"}, "PIGEON_EMAIL_PROVIDERS: smtp needs PIGEON_SMTP_HOST"),
        (
            {"PIGEON_SMS_PROVIDERS": "infobip"},
            "PIGEON_SMS_PROVIDERS: infobip needs PIGEON_INFOBIP_BASE_URL",
        ),
    ],
)
def test_a_route_that_cannot_work_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name in list(os.environ):
        if name.startswith("PIGEON_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as refused:
        Settings()

    assert named in settings_problem(refused.value)


def test_start_up_stops_with_the_message_and_no_traceback(tmp_path: Any) -> None:
    env = server_env(tmp_path, PIGEON_SMS_PROVIDERS="twilio", PIGEON_TWILIO_ACCOUNT_SID="AC1")
    result = subprocess.run(
        [*PIGEON, "serve"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )

    assert result.returncode == 2
    assert result.stderr.startswith("error: PIGEON_SMS_PROVIDERS: twilio needs ")
    assert "PIGEON_TWILIO_AUTH_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
