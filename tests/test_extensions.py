"""The Infobip extension: enable, show masked with webhook URLs, disable; delivery reports."""

from __future__ import annotations

import httpx

from tests.conftest import Server, wait_for_final
from tests.factories import enable_extension, make_person

SECRET = "tenant-secret-key-123456"


def test_put_then_get_masks_the_key_and_lists_webhooks(server: Server, api: httpx.Client) -> None:
    put = enable_extension(api, apiKey=SECRET, baseUrl="https://abcde.api.infobip.com/")
    got = api.get("/v1/extensions/infobip")
    assert got.status_code == 200
    body = got.json()
    assert body == put
    assert SECRET not in got.text
    assert body["apiKey"] == "****3456"
    assert body["baseUrl"] == "https://abcde.api.infobip.com"
    assert body["whatsappSender"] == "447860088594"
    prefix = f"{server.base_url}/v1/webhooks/infobip/"
    assert body["webhooks"]["deliveryReports"].startswith(prefix)
    assert body["webhooks"]["deliveryReports"].endswith("/reports")
    assert body["webhooks"]["inbound"].endswith("/inbound")
    token = body["webhooks"]["inbound"].removeprefix(prefix).split("/")[1]
    assert len(token) >= 40


def test_get_before_put_and_delete_disable(api: httpx.Client) -> None:
    missing = api.get("/v1/extensions/infobip")
    assert missing.status_code == 404
    assert missing.json()["code"] == "infobip_extension_not_enabled"
    enable_extension(api)
    assert api.delete("/v1/extensions/infobip").status_code == 204
    assert api.get("/v1/extensions/infobip").status_code == 404
    person = make_person(api)
    response = api.post(
        f"/v1/identities/{person['id']}/person/message/sms", json={"content": {"text": "x"}}
    )
    assert response.status_code == 422
    assert api.delete("/v1/extensions/infobip").status_code == 404


def test_put_validates_its_fields(api: httpx.Client) -> None:
    cases = [
        ({"baseUrl": "ftp://x", "apiKey": "k"}, "baseUrl"),
        ({"baseUrl": "https://x.api.infobip.com", "apiKey": ""}, "apiKey"),
        (
            {"baseUrl": "https://x.api.infobip.com", "apiKey": "k", "whatsappSender": "12"},
            "whatsappSender",
        ),
        (
            {"baseUrl": "https://x.api.infobip.com", "apiKey": "k", "emailSender": "not-an-email"},
            "emailSender",
        ),
        ({"apiKey": "k"}, "baseUrl"),
    ]
    for body, field in cases:
        response = api.put("/v1/extensions/infobip", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, response.text


def test_person_whatsapp_needs_a_whatsapp_sender(api: httpx.Client) -> None:
    api.put("/v1/extensions/infobip", json={"baseUrl": "https://x.api.infobip.com", "apiKey": "k"})
    person = make_person(api)
    response = api.post(
        f"/v1/identities/{person['id']}/person/message/whatsapp", json={"content": {"text": "x"}}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "extension_sender_missing"


def test_delivery_report_webhook_moves_status_forward_only(api: httpx.Client) -> None:
    extension = enable_extension(api)
    person = make_person(api)
    message_id = api.post(
        f"/v1/identities/{person['id']}/person/message/sms", json={"content": {"text": "x"}}
    ).json()["messages"][0]["messageId"]
    assert wait_for_final(api, message_id)["status"]["groupName"] == "DELIVERED"
    late = {
        "results": [
            {
                "messageId": message_id,
                "to": "385981234567",
                "status": {
                    "groupId": 5,
                    "groupName": "REJECTED",
                    "id": 6,
                    "name": "REJECTED_NETWORK",
                    "description": "Network is forbidden",
                },
                "error": {
                    "groupId": 0,
                    "groupName": "OK",
                    "id": 0,
                    "name": "NO_ERROR",
                    "description": "No Error",
                    "permanent": False,
                },
            },
            {
                "messageId": "unknown-id",
                "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5},
            },
        ]
    }
    response = api.post(extension["webhooks"]["deliveryReports"], json=late)
    assert response.status_code == 200
    assert response.json() == {"received": 2, "applied": 0, "unknown": 1}
    assert api.get(f"/v1/messages/{message_id}").json()["status"]["groupName"] == "DELIVERED"


def test_delivery_report_webhook_rejects_a_wrong_token(api: httpx.Client) -> None:
    extension = enable_extension(api)
    url = extension["webhooks"]["deliveryReports"].replace("/reports", "x/reports")
    assert api.post(url, json={"results": []}).status_code == 401
