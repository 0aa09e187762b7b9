"""Status tracking: the sandbox lifecycle, magic destinations, history, listing and filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import Server, wait_for_final
from tests.factories import make_user


def send_app_sms(api: httpx.Client, to: str) -> str:
    response = api.post("/v1/apps/message/sms", json={"to": to, "content": {"text": "x"}})
    assert response.status_code == 200, response.text
    return str(response.json()["messages"][0]["messageId"])


@pytest.mark.parametrize(
    ("destination", "group", "name"),
    [
        ("385981230002", "UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED"),
        ("385981230004", "EXPIRED", "EXPIRED_EXPIRED"),
        ("385981230005", "REJECTED", "REJECTED_DESTINATION"),
        ("385981230001", "DELIVERED", "DELIVERED_TO_HANDSET"),
    ],
)
def test_magic_phone_numbers_reach_each_final_group(
    api: httpx.Client, destination: str, group: str, name: str
) -> None:
    final = wait_for_final(api, send_app_sms(api, destination))
    assert final["status"]["groupName"] == group
    assert final["status"]["name"] == name
    if group == "DELIVERED":
        assert final["error"] is None
    else:
        assert final["error"]["name"].startswith("EC_")


@pytest.mark.parametrize(
    ("local", "group"),
    [("undeliverable", "UNDELIVERABLE"), ("expired", "EXPIRED"), ("rejected", "REJECTED")],
)
def test_magic_email_addresses(api: httpx.Client, local: str, group: str) -> None:
    response = api.post(
        "/v1/apps/message/email",
        json={"to": f"{local}@example.com", "content": {"subject": "s", "text": "t"}},
    )
    final = wait_for_final(api, response.json()["messages"][0]["messageId"])
    assert final["status"]["groupName"] == group


def test_rejection_happens_at_send_without_passing_enroute(api: httpx.Client) -> None:
    final = wait_for_final(api, send_app_sms(api, "385981230005"))
    assert [e["status"]["name"] for e in final["history"]] == [
        "PENDING_ACCEPTED",
        "REJECTED_DESTINATION",
    ]
    assert final["error"]["permanent"] is True


def test_history_keeps_the_raw_report(api: httpx.Client) -> None:
    final = wait_for_final(api, send_app_sms(api, "385981230002"))
    last = final["history"][-1]
    assert last["source"] == "report"
    assert last["detail"]["raw"]["status"]["name"] == "UNDELIVERABLE_NOT_DELIVERED"
    assert final["providerMessageId"] == last["detail"]["raw"]["messageId"]


def test_unknown_message_is_404_and_other_tenants_too(server: Server, api: httpx.Client) -> None:
    assert api.get("/v1/messages/123").status_code == 404
    message_id = send_app_sms(api, "385981239991")
    with server.client("AXVubzpwQDU1dzByYM==") as demo:
        response = demo.get(f"/v1/messages/{message_id}")
    assert response.status_code == 404
    assert response.json()["code"] == "message_not_found"


def test_list_filters_by_channel_status_recipient_and_time(api: httpx.Client) -> None:
    user = make_user(api)
    sms_id = api.post(
        f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}}
    ).json()["messages"][0]["messageId"]
    email_id = api.post(
        f"/v1/users/{user['id']}/message/email",
        json={"content": {"subject": "s", "text": "t"}},
    ).json()["messages"][0]["messageId"]
    rejected_id = send_app_sms(api, "385981230005")
    for message_id in (sms_id, email_id, rejected_id):
        wait_for_final(api, message_id)

    def ids(**params: str) -> list[str]:
        response = api.get("/v1/messages", params=params)
        assert response.status_code == 200, response.text
        return [m["messageId"] for m in response.json()["items"]]

    assert ids(recipient=user["id"]) == [email_id, sms_id]
    assert ids(recipient=user["id"], channel="email") == [email_id]
    assert rejected_id in ids(status="REJECTED")
    assert rejected_id in ids(status="REJECTED_DESTINATION")
    assert rejected_id not in ids(status="DELIVERED")
    assert sms_id in ids(status="DELIVERED", recipient=user["id"])
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert ids(**{"from": future}) == []
    assert sms_id in ids(to=future, recipient=user["id"])


def test_list_rejects_bad_filters(api: httpx.Client) -> None:
    assert api.get("/v1/messages", params={"status": "NOPE"}).status_code == 422
    assert api.get("/v1/messages", params={"channel": "fax"}).status_code == 422
    assert api.get("/v1/messages", params={"cursor": "!!"}).status_code == 422
    assert api.get("/v1/messages", params={"limit": "0"}).status_code in (400, 422)


def test_cursor_pagination_visits_each_message_once(api: httpx.Client) -> None:
    user = make_user(api)
    sent = {
        api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": str(i)}}).json()[
            "messages"
        ][0]["messageId"]
        for i in range(7)
    }
    seen: list[str] = []
    cursor = None
    while True:
        params = {"recipient": user["id"], "limit": "3"}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/messages", params=params).json()
        seen += [m["messageId"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(sent)
    assert seen == sorted(seen, reverse=True)


def test_last_full_page_has_no_next_cursor(api: httpx.Client) -> None:
    user = make_user(api)
    for i in range(4):
        api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": str(i)}})
    first = api.get("/v1/messages", params={"recipient": user["id"], "limit": "2"}).json()
    assert first["next_cursor"] is not None
    second = api.get(
        "/v1/messages",
        params={"recipient": user["id"], "limit": "2", "cursor": first["next_cursor"]},
    ).json()
    assert len(second["items"]) == 2
    assert second["next_cursor"] is None
