"""Text holding a NUL character gets a 422 naming its field, on both engines, never a 500.

PostgreSQL stores no NUL in text or JSON: before Pigeon refused them, each of these was a 500
there (and a send's failed the whole accept batch it joined); SQLite stored them.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import DEMO_ID, Server

NUL = "\x00"
BODIES = [
    ("/v1/users", {"username": f"ana{NUL}"}, "username"),
    ("/v1/users", {"username": "ana-data", "data": {"note": f"a{NUL}b"}}, "data.note"),
    ("/v1/users", {"username": "ana-key", "data": {f"k{NUL}": 1}}, f"data.k{NUL}"),
    (
        "/v1/users",
        {"username": "ana-deep", "data": {"a": [1, {"b": ["x", NUL]}]}},
        "data.a[1].b[1]",
    ),
    ("/v1/identities", {"data": {"x": NUL}}, "data.x"),
    (
        "/v1/identities",
        {"type": "person", "person": {"firstName": f"Ana{NUL}"}},
        "person.firstName",
    ),
    (f"/v1/users/{DEMO_ID}/message/sms", {"content": {"text": f"hi{NUL}"}}, "content.text"),
    (
        f"/v1/identities/{DEMO_ID}/person/message/email",
        {"content": {"subject": f"s{NUL}", "text": "t"}},
        "content.subject",
    ),
    (
        "/v1/apps/message/whatsapp",
        {"to": "38598123456", "content": {"template": {"name": f"n{NUL}", "language": "en"}}},
        "content.template.name",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), BODIES)
def test_a_nul_character_in_a_body_is_a_422_naming_the_field(
    demo: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    response = demo.post(path, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"] == [
        {"field": field, "message": "must not contain NUL characters (\\u0000)"}
    ]


def test_a_nul_character_in_the_extension_settings_is_a_422(api: httpx.Client) -> None:
    body = {"baseUrl": "https://x.api.infobip.com", "apiKey": f"key{NUL}"}
    response = api.put("/v1/extensions/infobip", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "apiKey"


def test_the_text_backslash_u0000_is_not_a_nul_character(api: httpx.Client) -> None:
    response = api.post("/v1/users", json={"username": "C:\\u0000"})
    assert response.status_code == 201, response.text
    assert response.json()["username"] == "C:\\u0000"


@pytest.mark.parametrize("kind", ["users/a%00b/message", "identities/a%00b/person/message"])
def test_a_send_to_an_id_holding_a_nul_is_a_404_and_other_sends_still_go(
    demo: httpx.Client, kind: str
) -> None:
    response = demo.post(f"/v1/{kind}/sms", json={"content": {"text": "hi"}})
    assert response.status_code == 404, response.text
    assert response.json()["code"] in {"user_not_found", "identity_not_found"}
    fine = demo.post(f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "hi"}})
    assert fine.status_code == 200, fine.text


def test_a_nul_character_in_the_recipient_filter_is_a_422(api: httpx.Client) -> None:
    response = api.get("/v1/messages", params={"recipient": f"a{NUL}b"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "recipient"


def test_a_webhook_url_whose_owner_holds_a_nul_is_a_401(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/webhooks/infobip/a%00b/token/reports", json={"results": []})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_webhook_token"
