"""Events to tenants: the catalogue, signed webhook deliveries, retries, rotation, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import Server, make_server, wait_for_final
from tests.databases import scalar
from tests.factories import (
    Tenant,
    create_tenant,
    enable_extension,
    make_person,
    make_user,
    open_whatsapp_window,
    unique_phone,
)
from tests.fakes.receiver import Received, Receiver

PLATFORM_NUMBER = "447860088593"
ALL_TYPES = [
    "sms.message.sent",
    "sms.message.delivered",
    "sms.message.failed",
    "whatsapp.message.sent",
    "whatsapp.message.delivered",
    "whatsapp.message.failed",
    "email.message.sent",
    "email.message.delivered",
    "email.message.failed",
    "whatsapp.message.received",
]


@pytest.fixture(scope="module")
def events_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Pigeon with private URLs allowed (the receiver is on 127.0.0.1) and quick retries."""
    srv = make_server(
        tmp_path_factory.mktemp("events"),
        PIGEON_ALLOW_PRIVATE_URLS="1",
        PIGEON_WEBHOOK_RETRY_SCHEDULE="0,0.2,0.2,0.2,0.2",
        PIGEON_WEBHOOK_TIMEOUT_SECONDS="3",
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def owner(events_server: Server) -> Tenant:
    return create_tenant(events_server)


@pytest.fixture
def api(events_server: Server, owner: Tenant) -> Iterator[httpx.Client]:
    with events_server.client(owner.api_key) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def update_endpoint_row(database_url: str, endpoint_id: str, **values: Any) -> None:
    """Change a stored endpoint behind the API's back (a clock moved on, an old URL)."""
    from sqlalchemy import update

    from pigeon.db.engine import create_engine
    from pigeon.db.tables import webhook_endpoints

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(webhook_endpoints)
                    .where(webhook_endpoints.c.id == endpoint_id)
                    .values(**values)
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


def create_endpoint(api: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/webhook-endpoints", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def send_sms(api: httpx.Client, to: str) -> str:
    response = api.post("/v1/apps/message/sms", json={"to": to, "content": {"text": "x"}})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The event, once the reference implementation has verified its signature."""
    return Webhook(secret).verify(request.body, request.headers)  # type: ignore[no-any-return]


def of_message(requests: list[Received], message_id: str) -> list[str]:
    return [r.event["type"] for r in requests if r.event["data"].get("messageId") == message_id]


def test_endpoint_is_created_with_a_secret_shown_once(api: httpx.Client) -> None:
    created = create_endpoint(api, "https://hooks.example.com/pigeon", description="ops")
    assert created["secret"].startswith("whsec_")
    assert len(Webhook(created["secret"])._whsecret) >= 24
    assert created["events"] == ALL_TYPES
    assert created["enabled"] is True
    assert set(created) >= {"id", "url", "events", "description", "enabled", "created_at"}
    fetched = api.get(f"/v1/webhook-endpoints/{created['id']}").json()
    assert "secret" not in fetched
    assert fetched["description"] == "ops"
    listed = api.get("/v1/webhook-endpoints").json()
    assert [e["id"] for e in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]


def test_a_retried_create_returns_the_same_endpoint_and_secret(
    events_server: Server, api: httpx.Client
) -> None:
    body = {"url": "https://hooks.example.com/retried", "description": "retried"}
    headers = {"idempotency-key": "create-endpoint-1"}
    first = api.post("/v1/webhook-endpoints", json=body, headers=headers)
    again = api.post("/v1/webhook-endpoints", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["cache-control"] == "no-store"
    assert again.json() == first.json()
    assert again.json()["secret"].startswith("whsec_")
    listed = api.get("/v1/webhook-endpoints").json()["items"]
    assert [e["id"] for e in listed if e["url"] == body["url"]] == [first.json()["id"]]
    # The replay is kept with the secret encrypted, like the endpoint's own.
    stored = scalar(
        events_server.env["PIGEON_DATABASE_URL"],
        "SELECT response_body FROM idempotency_keys WHERE key = 'create-endpoint-1'",
    )
    assert first.json()["id"] in stored
    assert first.json()["secret"] not in stored
    # The same key with another body creates nothing: 422, as on the send routes.
    other = api.post(
        "/v1/webhook-endpoints", json={**body, "description": "other"}, headers=headers
    )
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "idempotency_key_reused"
    listed = api.get("/v1/webhook-endpoints").json()["items"]
    assert len([e for e in listed if e["url"] == body["url"]]) == 1


def test_a_retried_rotation_rotates_once(api: httpx.Client, receiver: Receiver) -> None:
    endpoint = create_endpoint(api, receiver.url, events=["sms.message.failed"])
    path = f"/v1/webhook-endpoints/{endpoint['id']}/secret"
    first = api.post(path, headers={"idempotency-key": "rotate-1"})
    again = api.post(path, headers={"idempotency-key": "rotate-1"})
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["secret"] == first.json()["secret"] != endpoint["secret"]
    # Rotated once: the original secret and the first rotation's sign, nothing else.
    send_sms(api, "385981230005")
    [request] = receiver.wait_for(lambda rs: len(rs) >= 1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verified(endpoint["secret"], request)
    verified(first.json()["secret"], request)
    third = api.post(path, headers={"idempotency-key": "rotate-2"})
    assert third.status_code == 200
    assert third.json()["secret"] not in (first.json()["secret"], endpoint["secret"])


def test_endpoints_page_patch_and_delete(api: httpx.Client) -> None:
    ids = [create_endpoint(api, f"https://h{i}.example.com/")["id"] for i in range(3)]
    first = api.get("/v1/webhook-endpoints", params={"limit": 2}).json()
    second = api.get(
        "/v1/webhook-endpoints", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [e["id"] for e in first["items"] + second["items"]] == ids
    assert second["next_cursor"] is None
    patched = api.patch(
        f"/v1/webhook-endpoints/{ids[0]}",
        json={"events": ["sms.message.failed"], "enabled": False, "description": "d"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["events"] == ["sms.message.failed"]
    assert patched.json()["enabled"] is False
    assert api.delete(f"/v1/webhook-endpoints/{ids[0]}").status_code == 204
    assert api.get(f"/v1/webhook-endpoints/{ids[0]}").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://h.example.com/", "events": ["sms.message.bounced"]},
        {"url": "https://h.example.com/", "events": []},
        {"url": "not a url"},
        {"url": "ftp://h.example.com/"},
        {"url": "https://user:pass@h.example.com/"},
        {"events": ["sms.message.sent"]},
    ],
)
def test_bad_endpoints_are_422(api: httpx.Client, body: dict[str, Any]) -> None:
    response = api.post("/v1/webhook-endpoints", json=body)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_event_type_is_422_naming_it(api: httpx.Client) -> None:
    response = api.post(
        "/v1/webhook-endpoints", json={"url": "https://h.example.com/", "events": ["sms.nope"]}
    )
    assert response.status_code == 422
    assert "sms.nope" in response.json()["detail"]


def test_sms_events_signed_in_status_order(api: httpx.Client, receiver: Receiver) -> None:
    endpoint = create_endpoint(api, receiver.url + "/hook")
    delivered = send_sms(api, "385981230001")
    failed = send_sms(api, "385981230002")
    rejected = send_sms(api, "385981230005")
    requests = receiver.wait_for(lambda rs: len(rs) >= 5)
    time.sleep(0.3)  # nothing more comes
    # Deliveries run concurrently and may arrive in any order; the events were created in
    # status order, which is the order they are listed in (newest first).
    requests = list(receiver.received)
    assert sorted(of_message(requests, delivered)) == ["sms.message.delivered", "sms.message.sent"]
    assert sorted(of_message(requests, failed)) == ["sms.message.failed", "sms.message.sent"]
    assert of_message(requests, rejected) == ["sms.message.failed"]
    listed = [(e["data"]["messageId"], e["type"]) for e in api.get("/v1/events").json()["items"]]
    assert [t for m, t in reversed(listed) if m == delivered] == [
        "sms.message.sent",
        "sms.message.delivered",
    ]
    assert [t for m, t in reversed(listed) if m == failed] == [
        "sms.message.sent",
        "sms.message.failed",
    ]
    for request in requests:
        event = verified(endpoint["secret"], request)
        assert request.headers["webhook-id"] == event["id"]
        assert event["id"].startswith("evt_")
        assert request.headers["content-type"] == "application/json"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        datetime.fromisoformat(event["timestamp"])
    last = next(r.event for r in requests if r.event["type"] == "sms.message.delivered")
    data = last["data"]
    assert data["messageId"] == delivered
    assert data["channel"] == "sms"
    assert data["destination"] == "385981230001"
    assert data["recipient"] == {"type": "app", "id": None}
    assert data["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert set(data["status"]) == {"groupId", "groupName", "id", "name", "description"}
    assert data["error"] is None
    assert data["sentAt"] is not None
    assert data["doneAt"] is not None
    fail = next(r.event for r in requests if r.event["data"]["messageId"] == rejected)
    assert fail["data"]["status"]["groupName"] == "REJECTED"
    assert fail["data"]["error"]["permanent"] is True


def test_a_wrong_secret_does_not_verify(api: httpx.Client, receiver: Receiver) -> None:
    create_endpoint(api, receiver.url)
    send_sms(api, "385981230005")
    [request] = receiver.wait_for(lambda rs: len(rs) >= 1)
    other = create_endpoint(api, "https://elsewhere.example.com/")
    with pytest.raises(WebhookVerificationError):
        verified(other["secret"], request)


def test_whatsapp_and_email_events_and_inbound(
    events_server: Server, api: httpx.Client, receiver: Receiver
) -> None:
    endpoint = create_endpoint(api, receiver.url)
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    lines = dict(line.split(": ", 1) for line in events_server.cli("webhooks").splitlines())
    inbound = lines["inbound"].replace(events_server.base_url, "")
    open_whatsapp_window(api, inbound, customer=phone, business=PLATFORM_NUMBER)
    response = api.post(
        f"/v1/users/{user['id']}/message/whatsapp", json={"content": {"text": "hi"}}
    )
    assert response.status_code == 200, response.text
    whatsapp = response.json()["messages"][0]["messageId"]
    email = api.post(
        "/v1/apps/message/email",
        json={"to": "someone@example.com", "content": {"subject": "s", "text": "t"}},
    ).json()["messages"][0]["messageId"]
    failed_email = api.post(
        "/v1/apps/message/email",
        json={"to": "rejected@example.com", "content": {"subject": "s", "text": "t"}},
    ).json()["messages"][0]["messageId"]
    requests = receiver.wait_for(lambda rs: len(rs) >= 6)
    for request in requests:
        verified(endpoint["secret"], request)
    received = [r.event for r in requests if r.event["type"] == "whatsapp.message.received"]
    assert len(received) == 1
    assert received[0]["data"]["from"] == phone
    assert received[0]["data"]["to"] == PLATFORM_NUMBER
    assert received[0]["data"]["recipient"] == {"type": "user", "id": user["id"]}
    assert sorted(of_message(requests, whatsapp)) == [
        "whatsapp.message.delivered",
        "whatsapp.message.sent",
    ]
    wa = next(r.event for r in requests if r.event["data"].get("messageId") == whatsapp)
    assert wa["data"]["recipient"] == {"type": "user", "id": user["id"]}
    assert sorted(of_message(requests, email)) == ["email.message.delivered", "email.message.sent"]
    assert of_message(requests, failed_email) == ["email.message.failed"]


def test_a_repeated_inbound_webhook_tells_the_tenant_once(
    events_server: Server, api: httpx.Client
) -> None:
    # Infobip posts an inbound message again when its webhook saw no 2xx in time.
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    lines = dict(line.split(": ", 1) for line in events_server.cli("webhooks").splitlines())
    inbound = lines["inbound"].replace(events_server.base_url, "")

    def result(message_id: str) -> dict[str, Any]:
        return {
            "from": phone,
            "to": PLATFORM_NUMBER,
            "integrationType": "WHATSAPP",
            "messageId": message_id,
            "message": {"type": "TEXT", "text": "hello"},
        }

    first, second = f"wamid-{phone}-1", f"wamid-{phone}-2"
    posts = [[result(first)], [result(first)], [result(first), result(second), result(second)]]
    answers = [api.post(inbound, json={"results": results}) for results in posts]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    assert [a.json()["applied"] for a in answers] == [1, 0, 1]
    listed = api.get("/v1/events", params={"type": "whatsapp.message.received", "limit": 100})
    ids = [e["data"]["messageId"] for e in listed.json()["items"] if e["data"]["from"] == phone]
    assert sorted(ids) == [first, second]


def test_person_events_and_the_tenants_own_number(
    events_server: Server, api: httpx.Client, receiver: Receiver
) -> None:
    create_endpoint(
        api,
        receiver.url,
        events=["whatsapp.message.received", "whatsapp.message.sent", "whatsapp.message.failed"],
    )
    extension = enable_extension(api)
    inbound = extension["webhooks"]["inbound"].replace(events_server.base_url, "")
    phone = unique_phone()[:-4] + "0002"  # the sandbox's undeliverable suffix
    person = make_person(api, phone=phone)
    open_whatsapp_window(api, inbound, customer=phone, business="447860088594")
    response = api.post(
        f"/v1/identities/{person['id']}/person/message/whatsapp", json={"content": {"text": "hi"}}
    )
    assert response.status_code == 200, response.text
    message_id = response.json()["messages"][0]["messageId"]
    requests = receiver.wait_for(lambda rs: len(rs) >= 3)
    [received] = [r.event for r in requests if r.event["type"] == "whatsapp.message.received"]
    assert received["data"]["from"] == phone
    assert received["data"]["to"] == "447860088594"
    assert received["data"]["recipient"] is None  # the tenant's own number: no User involved
    assert sorted(of_message(requests, message_id)) == [
        "whatsapp.message.failed",
        "whatsapp.message.sent",
    ]
    failed = next(r.event for r in requests if r.event["type"] == "whatsapp.message.failed")
    assert failed["data"]["recipient"] == {"type": "identity", "id": person["id"]}
    assert failed["data"]["status"]["groupName"] == "UNDELIVERABLE"
    assert failed["data"]["error"] is not None


def test_redirects_are_not_followed(api: httpx.Client, receiver: Receiver) -> None:
    receiver.answer = lambda r: (
        (307, {"location": receiver.url + "/elsewhere"}, b"")
        if r.path == "/hook"
        else (200, {}, b"")
    )
    endpoint = create_endpoint(api, receiver.url + "/hook", events=["sms.message.failed"])
    send_sms(api, "385981230005")
    receiver.wait_for(lambda rs: len(rs) >= 2)
    time.sleep(0.3)
    assert {r.path for r in receiver.received} == {"/hook"}
    attempts = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["items"]
    assert {a["http_status"] for a in attempts} == {307}
    assert attempts[-1]["state"] == "pending"


def test_endpoint_gets_only_the_events_it_subscribes_to(
    api: httpx.Client, receiver: Receiver
) -> None:
    create_endpoint(api, receiver.url + "/failed", events=["sms.message.failed"])
    create_endpoint(api, receiver.url + "/all")
    delivered = send_sms(api, "385981230001")
    rejected = send_sms(api, "385981230005")
    receiver.wait_for(lambda rs: len([r for r in rs if r.path == "/all"]) >= 3)
    time.sleep(0.3)
    assert [e["type"] for e in receiver.events("/failed")] == ["sms.message.failed"]
    assert receiver.events("/failed")[0]["data"]["messageId"] == rejected
    assert delivered in {e["data"]["messageId"] for e in receiver.events("/all")}


def test_events_can_be_read_back(api: httpx.Client) -> None:
    delivered = send_sms(api, "385981230001")
    wait_for_final(api, delivered)
    rejected = send_sms(api, "385981230005")
    wait_for_final(api, rejected)
    listed = api.get("/v1/events").json()
    assert [(e["type"], e["data"]["messageId"]) for e in listed["items"]] == [
        ("sms.message.failed", rejected),
        ("sms.message.delivered", delivered),
        ("sms.message.sent", delivered),
    ]
    one = api.get(f"/v1/events/{listed['items'][1]['id']}").json()
    assert one == listed["items"][1]
    only = api.get("/v1/events", params={"type": "sms.message.sent"}).json()
    assert [e["data"]["messageId"] for e in only["items"]] == [delivered]
    page = api.get("/v1/events", params={"limit": 2}).json()
    rest = api.get("/v1/events", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [e["id"] for e in page["items"] + rest["items"]] == [e["id"] for e in listed["items"]]
    after = listed["items"][1]["timestamp"]
    newer = api.get("/v1/events", params={"after": after}).json()
    assert [e["id"] for e in newer["items"]] == [listed["items"][0]["id"]]
    assert api.get("/v1/events", params={"type": "sms.nope"}).status_code == 422
    assert api.get("/v1/events/evt_nope").status_code == 404


def test_receiver_failing_three_times_gets_one_event_with_one_id(
    api: httpx.Client, receiver: Receiver
) -> None:
    answers = iter([500, 502, 503])
    receiver.answer = lambda _: (next(answers, 200), {}, b"nope")
    endpoint = create_endpoint(api, receiver.url, events=["sms.message.failed"])
    send_sms(api, "385981230005")
    requests = receiver.wait_for(lambda rs: len(rs) >= 4)
    time.sleep(0.6)  # no fifth attempt after the success
    assert len(receiver.received) == 4
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    for request in requests:
        verified(endpoint["secret"], request)
    attempts = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["items"]
    assert [a["attempt"] for a in attempts] == [4, 3, 2, 1]
    assert [a["state"] for a in attempts] == ["succeeded", "pending", "pending", "pending"]
    assert [a["http_status"] for a in attempts] == [200, 503, 502, 500]
    assert attempts[0]["next_attempt_at"] is None
    assert attempts[1]["next_attempt_at"] is not None
    assert attempts[1]["response"] == "nope"
    assert {a["event_id"] for a in attempts} == {requests[0].headers["webhook-id"]}
    assert attempts[0]["event_type"] == "sms.message.failed"
    assert attempts[0]["duration_ms"] >= 0


def test_retry_after_is_honoured(api: httpx.Client, receiver: Receiver) -> None:
    answers = iter([(429, {"retry-after": "1"}, b"slow down")])
    receiver.answer = lambda _: next(answers, (200, {}, b"ok"))
    create_endpoint(api, receiver.url, events=["sms.message.failed"])
    send_sms(api, "385981230005")
    receiver.wait_for(lambda rs: len(rs) >= 2)
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.received]
    assert stamps[1] - stamps[0] >= 1  # the schedule alone would retry after 0.2 s


def test_410_disables_the_endpoint(api: httpx.Client, receiver: Receiver) -> None:
    receiver.answer = lambda _: (410, {}, b"gone")
    endpoint = create_endpoint(api, receiver.url)
    send_sms(api, "385981230005")
    receiver.wait_for(lambda rs: len(rs) >= 1)
    deadline = time.monotonic() + 5
    while api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()["enabled"]:
        assert time.monotonic() < deadline, "the endpoint is still enabled"
        time.sleep(0.05)
    body = api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()
    assert "410" in body["disabled_reason"]
    send_sms(api, "385981230005")
    time.sleep(0.8)
    assert len(receiver.received) == 1
    [attempt] = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["items"]
    assert attempt["state"] == "failed"


def test_failing_past_the_limit_disables(tmp_path: Any, receiver: Receiver) -> None:
    srv = make_server(
        tmp_path,
        PIGEON_ALLOW_PRIVATE_URLS="1",
        PIGEON_WEBHOOK_RETRY_SCHEDULE="0,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
        PIGEON_WEBHOOK_DISABLE_AFTER_SECONDS="0.5",
    )
    srv.start()
    try:
        tenant = create_tenant(srv)
        receiver.answer = lambda _: (500, {}, b"down")
        with srv.client(tenant.api_key) as api:
            endpoint = create_endpoint(api, receiver.url, events=["sms.message.failed"])
            send_sms(api, "385981230005")
            deadline = time.monotonic() + 10
            while api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()["enabled"]:
                assert time.monotonic() < deadline, "the failing endpoint is still enabled"
                time.sleep(0.05)
            assert 2 <= len(receiver.received) < 8
            reason = api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()["disabled_reason"]
            assert "failed" in reason
    finally:
        srv.stop()


def test_rotation_signs_with_both_secrets_then_only_the_new(
    events_server: Server, api: httpx.Client, receiver: Receiver
) -> None:
    endpoint = create_endpoint(api, receiver.url, events=["sms.message.failed"])
    rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/secret")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != endpoint["secret"]
    send_sms(api, "385981230005")
    [both] = receiver.wait_for(lambda rs: len(rs) >= 1)
    assert len(both.headers["webhook-signature"].split(" ")) == 2
    verified(endpoint["secret"], both)
    verified(new_secret, both)
    # 25 hours later, as far as the stored rotation time says.
    update_endpoint_row(
        events_server.env["PIGEON_DATABASE_URL"],
        endpoint["id"],
        rotated_at=datetime.now(UTC) - timedelta(hours=25),
    )
    send_sms(api, "385981230005")
    later = receiver.wait_for(lambda rs: len(rs) >= 2)[1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    verified(new_secret, later)
    with pytest.raises(WebhookVerificationError):
        verified(endpoint["secret"], later)


def test_recover_queues_failed_deliveries_again(api: httpx.Client, receiver: Receiver) -> None:
    receiver.answer = lambda _: (500, {}, b"down")
    endpoint = create_endpoint(api, receiver.url, events=["sms.message.failed"])
    since = datetime.now(UTC).isoformat()
    send_sms(api, "385981230005")
    receiver.wait_for(lambda rs: len(rs) >= 5)
    deliveries = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
    deadline = time.monotonic() + 5
    while api.get(deliveries).json()["items"][0]["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    receiver.answer = lambda _: (204, {}, b"")
    answer = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/recover", json={"since": since})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"requeued": 1}
    requests = receiver.wait_for(lambda rs: len(rs) >= 6)
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    deadline = time.monotonic() + 5
    while api.get(deliveries).json()["items"][0]["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/recover", json={"since": since})
    assert again.json() == {"requeued": 0}
    bad = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/recover", json={"since": "yesterday"})
    assert bad.status_code in (400, 422)


def test_tenants_see_only_their_own_endpoints_and_events(
    events_server: Server, api: httpx.Client, receiver: Receiver
) -> None:
    endpoint = create_endpoint(api, receiver.url)
    mine = send_sms(api, "385981230005")
    wait_for_final(api, mine)
    other = create_tenant(events_server)
    with events_server.client(other.api_key) as them:
        path = f"/v1/webhook-endpoints/{endpoint['id']}"
        assert them.get(path).status_code == 404
        assert them.patch(path, json={"enabled": False}).status_code == 404
        assert them.delete(path).status_code == 404
        assert them.post(path + "/secret").status_code == 404
        assert them.get(path + "/deliveries").status_code == 404
        assert (
            them.post(path + "/recover", json={"since": "2020-01-01T00:00:00Z"}).status_code == 404
        )
        assert them.get("/v1/webhook-endpoints").json()["items"] == []
        assert them.get("/v1/events").json()["items"] == []
        event_id = api.get("/v1/events").json()["items"][0]["id"]
        assert them.get(f"/v1/events/{event_id}").status_code == 404
        their_message = send_sms(them, "385981230005")
        wait_for_final(them, their_message)
    time.sleep(0.5)
    assert their_message not in {e["data"]["messageId"] for e in receiver.events()}
    assert api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()["enabled"] is True


def test_without_private_urls_internal_hosts_are_refused(tmp_path: Any, receiver: Receiver) -> None:
    srv = make_server(tmp_path, PIGEON_ALLOW_PRIVATE_URLS="0")
    srv.start()
    try:
        tenant = create_tenant(srv)
        with srv.client(tenant.api_key) as api:
            for url in [
                receiver.url,
                "https://127.0.0.1/hook",
                "https://localhost/hook",
                "https://10.1.2.3/hook",
                "https://169.254.169.254/latest",
                "https://100.64.0.1/",
                "https://[::1]/",
                "https://0.0.0.0/",
                "https://224.0.0.1/",
            ]:
                response = api.post("/v1/webhook-endpoints", json={"url": url})
                assert response.status_code == 422, (url, response.text)
                assert response.json()["errors"][0]["field"] == "url"
            # Stored before the rule (or through DNS that changed since): refused at send time.
            endpoint = create_endpoint(api, "https://hooks.example.com/")
            update_endpoint_row(
                srv.env["PIGEON_DATABASE_URL"],
                endpoint["id"],
                url=f"https://127.0.0.1:{receiver.url.rsplit(':', 1)[1]}/",
            )
            send_sms(api, "385981230005")
            deliveries = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
            deadline = time.monotonic() + 5
            while not api.get(deliveries).json()["items"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            attempt = api.get(deliveries).json()["items"][0]
            assert attempt["http_status"] is None
            assert "loopback" in attempt["error"]
        assert receiver.received == []
    finally:
        srv.stop()


def test_secrets_are_encrypted_at_rest_and_never_logged(
    events_server: Server, api: httpx.Client
) -> None:
    endpoint = create_endpoint(api, "https://hooks.example.com/")
    rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/secret").json()["secret"]
    stored = scalar(
        events_server.env["PIGEON_DATABASE_URL"],
        f"SELECT secret || previous_secret FROM webhook_endpoints WHERE id = '{endpoint['id']}'",
    )
    for secret in (endpoint["secret"], rotated):
        assert secret not in stored
        assert secret[6:] not in stored
        assert secret[6:] not in events_server.log_path.read_text()
