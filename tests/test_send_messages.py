"""Sending to Users, Persons and apps: the documented bodies, answers and errors."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import DATABASES, DEMO_ID, Server, wait_for_final
from tests.factories import enable_extension, make_person, make_user

PENDING_ACCEPTED = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}
EMAIL = {"subject": "Hello", "html": "<b>Hi</b>", "text": "Hi"}


def assert_accepted(response: httpx.Response, destination: str) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["messages"]
    [message] = body["messages"]
    assert set(message) == {"messageId", "status", "destination"}
    assert re.fullmatch(r"\d{22}", message["messageId"])
    assert message["status"] == PENDING_ACCEPTED
    assert message["destination"] == destination
    return str(message["messageId"])


def test_sms_to_user_is_accepted_and_delivered(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(
        f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "This is test SMS"}}
    )
    message_id = assert_accepted(response, user["channel"]["sms"])
    final = wait_for_final(api, message_id)
    assert final["status"]["name"] == "DELIVERED_TO_HANDSET"
    assert [e["status"]["name"] for e in final["history"]] == [
        "PENDING_ACCEPTED",
        "PENDING_ENROUTE",
        "DELIVERED_TO_HANDSET",
    ]
    assert final["channel"] == "sms"
    assert final["recipient"] == {"type": "user", "id": user["id"]}
    assert final["content"] == {"text": "This is test SMS"}
    assert final["error"] is None
    assert final["doneAt"] is not None


def test_email_to_user_keeps_html_and_text(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(f"/v1/users/{user['id']}/message/email", json={"content": EMAIL})
    message_id = assert_accepted(response, user["channel"]["email"])
    message = api.get(f"/v1/messages/{message_id}").json()
    assert message["content"] == EMAIL


def test_email_with_only_text_or_only_html_is_accepted(api: httpx.Client) -> None:
    user = make_user(api)
    for content in ({"subject": "s", "text": "t"}, {"subject": "s", "html": "<p>h</p>"}):
        response = api.post(f"/v1/users/{user['id']}/message/email", json={"content": content})
        assert_accepted(response, user["channel"]["email"])


def test_message_ids_are_unique(api: httpx.Client) -> None:
    user = make_user(api)
    ids = {
        assert_accepted(
            api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": f"n{i}"}}),
            user["channel"]["sms"],
        )
        for i in range(20)
    }
    assert len(ids) == 20


def test_unknown_user_is_404(api: httpx.Client) -> None:
    response = api.post(
        "/v1/users/634b56217f6a7b0be52dfff0/message/sms", json={"content": {"text": "x"}}
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "user_not_found"


def test_other_tenants_user_is_404_like_a_missing_one(server: Server, api: httpx.Client) -> None:
    with server.client("AXVubzpwQDU1dzByYM==") as demo:
        response = demo.get("/v1/users")
        assert response.status_code == 200
    response = api.post(f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "x"}})
    assert response.status_code == 404
    assert response.json()["code"] == "user_not_found"


def test_user_without_the_channel_is_422_naming_the_field(api: httpx.Client) -> None:
    user = make_user(api, channel={"email": "only@example.com"})
    response = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "channel_not_set"
    assert body["errors"] == [{"field": "channel.sms", "message": "not set"}]


def test_inactive_user_cannot_be_messaged(api: httpx.Client) -> None:
    user = make_user(api, active=False)
    response = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}})
    assert response.status_code == 422
    assert response.json()["code"] == "user_inactive"


def test_empty_or_blank_text_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    for text in ("", "   "):
        response = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": text}})
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "content.text"


def test_subject_sent_to_sms_is_422_and_points_to_email(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": EMAIL})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert {"field": "content.subject", "message": "unknown field"} in body["errors"]
    assert "/message/email" in body["detail"]


def test_email_without_subject_or_body_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    url = f"/v1/users/{user['id']}/message/email"
    no_subject = api.post(url, json={"content": {"text": "body"}})
    assert no_subject.status_code == 422
    assert no_subject.json()["code"] == "missing_subject"
    no_body = api.post(url, json={"content": {"subject": "s"}})
    assert no_body.status_code == 422
    assert no_body.json()["code"] == "missing_body"


def test_malformed_json_is_400(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(
        f"/v1/users/{user['id']}/message/sms",
        content=b'{"content": {"text": ',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


def test_wrong_shapes_are_422_never_500(api: httpx.Client) -> None:
    user = make_user(api)
    url = f"/v1/users/{user['id']}/message/sms"
    for body in ([], {"content": "text"}, {"content": {"text": 5}}, {"text": "x"}, {}, None):
        response = api.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["status"] == 422


def test_sms_over_1600_characters_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(
        f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x" * 1601}}
    )
    assert response.status_code == 422


def test_missing_api_key_is_401(server: Server) -> None:
    with server.client() as anonymous:
        response = anonymous.post(
            f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "x"}}
        )
    assert response.status_code == 401
    assert response.json()["code"] == "missing_api_key"


def test_person_needs_the_infobip_extension(api: httpx.Client) -> None:
    person = make_person(api)
    response = api.post(
        f"/v1/identities/{person['id']}/person/message/sms", json={"content": {"text": "x"}}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "infobip_extension_not_enabled"
    assert "PUT /v1/extensions/infobip" in response.json()["detail"]


def test_sms_and_email_to_person_go_to_first_contact(api: httpx.Client) -> None:
    enable_extension(api)
    person = make_person(api)
    contact = person["person"]["contactInformation"]
    sms = api.post(
        f"/v1/identities/{person['id']}/person/message/sms", json={"content": {"text": "hi"}}
    )
    sms_id = assert_accepted(sms, contact["phone"][0]["number"])
    email = api.post(f"/v1/identities/{person['id']}/person/message/email", json={"content": EMAIL})
    email_id = assert_accepted(email, contact["email"][0]["address"])
    for message_id in (sms_id, email_id):
        final = wait_for_final(api, message_id)
        assert final["status"]["groupName"] == "DELIVERED"
        assert final["recipient"] == {"type": "person", "id": person["id"]}
    assert api.get(f"/v1/messages/{sms_id}").json()["sender"] == "Tenant"


def test_person_without_phone_is_422_naming_the_field(api: httpx.Client) -> None:
    enable_extension(api)
    response = api.post(
        "/v1/identities",
        json={
            "type": "person",
            "person": {"contactInformation": {"email": [{"address": "a@b.co"}]}},
        },
    )
    person = response.json()
    response = api.post(
        f"/v1/identities/{person['id']}/person/message/sms", json={"content": {"text": "x"}}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "person.contactInformation.phone[0].number"


def test_company_identity_is_not_a_person(api: httpx.Client) -> None:
    enable_extension(api)
    company = api.post("/v1/identities", json={"type": "company"}).json()
    response = api.post(
        f"/v1/identities/{company['id']}/person/message/sms", json={"content": {"text": "x"}}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "not_a_person"


def test_unknown_identity_is_404(api: httpx.Client) -> None:
    enable_extension(api)
    response = api.post(
        "/v1/identities/634b56217f6a7b0be52dfff1/person/message/sms",
        json={"content": {"text": "x"}},
    )
    assert response.status_code == 404
    assert response.json()["code"] == "identity_not_found"


def test_app_message_to_any_destination(api: httpx.Client) -> None:
    response = api.post(
        "/v1/apps/message/sms", json={"to": "+385 98 765 4321", "content": {"text": "hi"}}
    )
    message_id = assert_accepted(response, "385987654321")
    assert wait_for_final(api, message_id)["recipient"] == {"type": "app", "id": None}
    email = api.post("/v1/apps/message/email", json={"to": "someone@example.com", "content": EMAIL})
    assert_accepted(email, "someone@example.com")


def test_app_message_with_invalid_destination_is_422(api: httpx.Client) -> None:
    response = api.post("/v1/apps/message/sms", json={"to": "12", "content": {"text": "hi"}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "to"
    response = api.post("/v1/apps/message/email", json={"to": "nope", "content": EMAIL})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "to"


def test_unknown_channel_is_404(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.post(f"/v1/users/{user['id']}/message/telegram", json={"content": {"text": "x"}})
    assert response.status_code == 404
    assert response.json()["status"] == 404


@pytest.mark.skipif(DATABASES.engine != "sqlite", reason="SQLite's one write lock")
def test_sends_wait_for_another_sqlite_writer_then_are_stored_once(
    server: Server, api: httpx.Client
) -> None:
    user = make_user(api)
    url = f"/v1/users/{user['id']}/message/sms"
    database = make_url(server.env["PIGEON_DATABASE_URL"]).database
    assert database is not None
    holder = sqlite3.connect(database, isolation_level=None, timeout=10)

    async def scenario() -> list[httpx.Response]:
        headers = {"x-api-key": api.headers["x-api-key"]}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            sends = [
                asyncio.create_task(
                    client.post(
                        url,
                        json={"content": {"text": f"while locked {i}"}},
                        headers={"idempotency-key": f"{user['id']}-locked-{i}"},
                    )
                )
                for i in range(8)
            ]
            await asyncio.sleep(0.7)
            # Nothing is answered before it is durable, and reads go on meanwhile.
            assert not any(send.done() for send in sends)
            listed = await client.get("/v1/messages", params={"recipient": user["id"]})
            assert listed.status_code == 200
            assert listed.json()["items"] == []
            holder.rollback()
            return await asyncio.gather(*sends)

    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    try:
        responses = asyncio.run(scenario())
    finally:
        if holder.in_transaction:
            holder.rollback()
        holder.close()
    ids = {assert_accepted(response, user["channel"]["sms"]) for response in responses}
    assert len(ids) == 8
    listed = api.get("/v1/messages", params={"recipient": user["id"], "limit": 100})
    assert sorted(m["messageId"] for m in listed.json()["items"]) == sorted(ids)
