"""WhatsApp's rule: only people who wrote first, free-form only within 24 hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import Server, wait_for_final
from tests.factories import enable_extension, make_person, make_user, open_whatsapp_window

PLATFORM_NUMBER = "447860088593"


@pytest.fixture(scope="module")
def platform_inbound(server: Server) -> str:
    lines = dict(line.split(": ", 1) for line in server.cli("webhooks").splitlines())
    assert lines["inbound"].startswith(server.base_url + "/v1/webhooks/infobip/platform/")
    return lines["inbound"].replace(server.base_url, "")


def infobip_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def send_whatsapp(api: httpx.Client, user_id: str) -> httpx.Response:
    return api.post(
        f"/v1/users/{user_id}/message/whatsapp", json={"content": {"text": "Hi on WhatsApp"}}
    )


def test_user_who_never_wrote_cannot_be_messaged(api: httpx.Client) -> None:
    user = make_user(api)
    response = send_whatsapp(api, user["id"])
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "whatsapp_no_interaction"
    assert PLATFORM_NUMBER in body["detail"]


def test_user_who_wrote_can_be_messaged_and_it_is_delivered(
    api: httpx.Client, platform_inbound: str
) -> None:
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    open_whatsapp_window(api, platform_inbound, customer=phone, business=PLATFORM_NUMBER)
    response = send_whatsapp(api, user["id"])
    assert response.status_code == 200, response.text
    [message] = response.json()["messages"]
    assert message["destination"] == phone
    final = wait_for_final(api, message["messageId"])
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert final["sender"] == PLATFORM_NUMBER


def test_window_closes_24_hours_after_last_message(
    api: httpx.Client, platform_inbound: str
) -> None:
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    old = infobip_time(datetime.now(UTC) - timedelta(hours=25))
    open_whatsapp_window(
        api, platform_inbound, customer=phone, business=PLATFORM_NUMBER, received_at=old
    )
    response = send_whatsapp(api, user["id"])
    assert response.status_code == 422
    assert response.json()["code"] == "whatsapp_window_closed"
    assert "24 hours" in response.json()["detail"]
    recent = infobip_time(datetime.now(UTC) - timedelta(hours=23))
    open_whatsapp_window(
        api, platform_inbound, customer=phone, business=PLATFORM_NUMBER, received_at=recent
    )
    assert send_whatsapp(api, user["id"]).status_code == 200


def test_an_older_late_inbound_does_not_close_an_open_window(
    api: httpx.Client, platform_inbound: str
) -> None:
    user = make_user(api)
    phone = user["channel"]["whatsapp"]
    open_whatsapp_window(api, platform_inbound, customer=phone, business=PLATFORM_NUMBER)
    old = infobip_time(datetime.now(UTC) - timedelta(hours=30))
    open_whatsapp_window(
        api, platform_inbound, customer=phone, business=PLATFORM_NUMBER, received_at=old
    )
    assert send_whatsapp(api, user["id"]).status_code == 200


def test_writing_to_another_number_does_not_count(api: httpx.Client, platform_inbound: str) -> None:
    user = make_user(api)
    open_whatsapp_window(
        api, platform_inbound, customer=user["channel"]["whatsapp"], business="447860088594"
    )
    assert send_whatsapp(api, user["id"]).status_code == 422


def test_inbound_webhook_rejects_a_wrong_token(server: Server, api: httpx.Client) -> None:
    response = api.post(
        "/v1/webhooks/infobip/platform/not-the-token/inbound",
        json={"results": [{"from": "38598123456", "to": PLATFORM_NUMBER}]},
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_webhook_token"


def test_person_follows_the_rule_against_the_tenants_number(
    api: httpx.Client, platform_inbound: str
) -> None:
    extension = enable_extension(api, whatsappSender="447860088594")
    person = make_person(api)
    phone = person["person"]["contactInformation"]["phone"][0]["number"]
    url = f"/v1/identities/{person['id']}/person/message/whatsapp"
    assert api.post(url, json={"content": {"text": "x"}}).status_code == 422
    # Writing to the platform's number opens nothing for the tenant's number.
    open_whatsapp_window(api, platform_inbound, customer=phone, business="447860088594")
    assert api.post(url, json={"content": {"text": "x"}}).status_code == 422
    tenant_inbound = extension["webhooks"]["inbound"]
    open_whatsapp_window(api, tenant_inbound, customer=phone, business="+447860088594")
    response = api.post(url, json={"content": {"text": "x"}})
    assert response.status_code == 200, response.text
    final = wait_for_final(api, response.json()["messages"][0]["messageId"])
    assert final["sender"] == "447860088594"


def test_tenant_inbound_url_does_not_work_for_another_tenant(
    server: Server, api: httpx.Client
) -> None:
    extension = enable_extension(api)
    inbound = extension["webhooks"]["inbound"]
    owner = inbound.split("/v1/webhooks/infobip/")[1].split("/")[0]
    forged = inbound.replace(owner, "634b56217f6a7b0be52d0000")
    response = api.post(forged, json={"results": [{"from": "38598123456", "to": "447860088594"}]})
    assert response.status_code == 401
