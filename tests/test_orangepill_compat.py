"""Orangepill's own forms: WhatsApp templates, the person sub-resource, `+` in `?recipient=`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import DEMO_ID, Server, wait_for_final
from tests.factories import enable_extension, make_user, unique_phone

ORANGEPILL_TEMPLATE = {
    "templateName": "welcome_back",
    "templateData": {"body": {"placeholders": ["Ana", "42"]}},
    "language": "en_GB",
}
STORED_TEMPLATE = {
    "template": {"name": "welcome_back", "language": "en_GB", "placeholders": ["Ana", "42"]}
}
WHATSAPP_ROUTES = [
    (f"/v1/users/{DEMO_ID}/message/whatsapp", {}),
    (f"/v1/identities/{DEMO_ID}/person/message/whatsapp", {}),
    ("/v1/apps/message/whatsapp", {"to": "+385 98 123 456"}),
]


# --- WhatsApp templates in Orangepill's form ------------------------------------------------------


@pytest.mark.parametrize(("path", "extra"), WHATSAPP_ROUTES)
def test_orangepill_template_form_is_sent_as_a_template(
    demo: httpx.Client, path: str, extra: dict[str, Any]
) -> None:
    response = demo.post(path, json={**extra, "content": ORANGEPILL_TEMPLATE})

    assert response.status_code == 200, response.text
    message_id = response.json()["messages"][0]["messageId"]
    message = wait_for_final(demo, message_id)
    assert message["content"] == STORED_TEMPLATE
    assert message["status"]["groupName"] == "DELIVERED", message


def test_orangepill_template_without_placeholders(demo: httpx.Client) -> None:
    content = {"templateName": "hello", "language": "en"}
    response = demo.post(WHATSAPP_ROUTES[0][0], json={"content": content})

    assert response.status_code == 200, response.text
    message = demo.get(f"/v1/messages/{response.json()['messages'][0]['messageId']}").json()
    assert message["content"] == {
        "template": {"name": "hello", "language": "en", "placeholders": []}
    }


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"templateName": "welcome_back"}, "content.language"),
        ({**ORANGEPILL_TEMPLATE, "text": "and text"}, "content.text"),
        (
            {**ORANGEPILL_TEMPLATE, "template": {"name": "x", "language": "en"}},
            "content.text",
        ),
        (
            {"templateData": {"body": {"placeholders": ["x"]}}, "language": "en"},
            "content.templateName",
        ),
        ({"language": "en", "text": "hi"}, "content.templateName"),
        ({**ORANGEPILL_TEMPLATE, "templateName": ""}, "content.templateName"),
        ({**ORANGEPILL_TEMPLATE, "templateData": {"header": {}}}, "content.templateData.header"),
    ],
)
def test_a_wrong_orangepill_template_names_its_field(
    demo: httpx.Client, content: dict[str, Any], field: str
) -> None:
    response = demo.post(WHATSAPP_ROUTES[0][0], json={"content": content})

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field, response.text


# --- POST /v1/identities/{id}/person -------------------------------------------------------------


def test_posting_a_person_makes_the_identity_a_person(api: httpx.Client) -> None:
    enable_extension(api)
    created = api.post("/v1/identities", json={"type": "neutral", "country": "HR"})
    assert created.status_code == 201, created.text
    identity_id = created.json()["id"]
    phone = unique_phone()
    person = {
        "firstName": "Marko",
        "lastName": "Marić",
        "contactInformation": {
            "phone": [{"number": f"+{phone[:3]} {phone[3:5]} {phone[5:]}"}],
            "email": [{"address": "Marko.Maric@Example.com"}],
        },
    }

    response = api.post(f"/v1/identities/{identity_id}/person", json=person)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "person"
    assert body["country"] == "HR"
    assert body["person"]["firstName"] == "Marko"
    assert body["person"]["contactInformation"]["phone"] == [{"number": phone}]
    assert body["person"]["contactInformation"]["email"][0]["address"].endswith("@example.com")
    assert body["sync"] is not None, "the CDP sync follows as for an update"
    assert api.get(f"/v1/identities/{identity_id}").json()["person"] == body["person"]
    sent = api.post(
        f"/v1/identities/{identity_id}/person/message/sms", json={"content": {"text": "Hi"}}
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["messages"][0]["destination"] == phone


def test_posting_a_person_replaces_the_one_before(api: httpx.Client) -> None:
    created = api.post(
        "/v1/identities",
        json={"type": "person", "person": {"firstName": "Old", "lastName": "Name"}},
    ).json()

    response = api.post(f"/v1/identities/{created['id']}/person", json={"firstName": "New"})

    assert response.status_code == 200, response.text
    assert response.json()["person"] == {
        "firstName": "New",
        "lastName": None,
        "contactInformation": {"phone": [], "email": []},
    }


def test_posting_a_person_validates_it(api: httpx.Client) -> None:
    identity_id = api.post("/v1/identities", json={}).json()["id"]
    cases = [
        (
            {"contactInformation": {"phone": [{"number": "12"}]}},
            "contactInformation.phone[0].number",
        ),
        (
            {"contactInformation": {"email": [{"address": "nope"}]}},
            "contactInformation.email[0].address",
        ),
        ({"nickname": "x"}, "nickname"),
    ]
    for body, field in cases:
        response = api.post(f"/v1/identities/{identity_id}/person", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, response.text
    assert api.get(f"/v1/identities/{identity_id}").json()["type"] == "neutral"
    missing = api.post("/v1/identities/000000000000000000000000/person", json={})
    assert missing.status_code == 404
    assert missing.json()["code"] == "identity_not_found"


def test_posting_a_person_is_idempotent(api: httpx.Client) -> None:
    identity_id = api.post("/v1/identities", json={}).json()["id"]
    headers = {"idempotency-key": f"person-{identity_id}"}
    path = f"/v1/identities/{identity_id}/person"

    first = api.post(path, json={"firstName": "Ana"}, headers=headers)
    again = api.post(path, json={"firstName": "Ana"}, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


# --- GET /v1/messages filters --------------------------------------------------------------------


def test_recipient_filter_takes_a_phone_number_with_plus(server: Server, api: httpx.Client) -> None:
    phone = unique_phone()
    user = make_user(api, phone=phone)
    sent = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}})
    message_id = sent.json()["messages"][0]["messageId"]

    for query in (
        f"recipient={phone}",
        f"recipient=+{phone}",  # a raw '+' arrives as a space
        f"recipient=%2B{phone}",
        f"recipient=%2B{phone[:3]}%20{phone[3:5]}%20{phone[5:]}",
        f"recipient={user['id']}",
    ):
        found = api.get(f"/v1/messages?{query}")
        assert found.status_code == 200, (query, found.text)
        assert [m["messageId"] for m in found.json()["items"]] == [message_id], query


def test_a_bad_recipient_filter_names_recipient(api: httpx.Client) -> None:
    response = api.get("/v1/messages", params={"recipient": "not a phone"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "recipient"


@pytest.mark.parametrize("name", ["from", "to"])
def test_a_bad_time_filter_names_its_parameter(api: httpx.Client, name: str) -> None:
    response = api.get("/v1/messages", params={name: "yesterday"})

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == name


def test_time_filters_take_an_offset_even_with_an_unencoded_plus(api: httpx.Client) -> None:
    user = make_user(api)
    sent = api.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}})
    message_id = sent.json()["messages"][0]["messageId"]

    found = api.get("/v1/messages?from=2020-01-01T00:00:00+01:00")
    none = api.get("/v1/messages?to=2020-01-01T00:00:00%2B01:00")

    assert found.status_code == 200, found.text
    assert message_id in [m["messageId"] for m in found.json()["items"]]
    assert none.status_code == 200, none.text
    assert none.json()["items"] == []


# --- HEAD /health --------------------------------------------------------------------------------


def test_head_health_answers_like_get_without_a_body(server: Server) -> None:
    got = httpx.get(f"{server.base_url}/health")
    head = httpx.head(f"{server.base_url}/health")

    assert got.status_code == head.status_code == 200
    assert head.content == b""
