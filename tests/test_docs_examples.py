"""The reference's curl examples, as written (host changed), against the demo tenant."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import DEMO_ID, DEMO_KEY, Server, wait_for_final

HEADERS = {
    "x-api-key": DEMO_KEY,
    "idempotency-key": "27373fabc392933deffda",
    "Content-Type": "application/json",
}
SMS = '{\n    "content": {\n        "text": "This is test SMS message"\n    }\n}'
WHATSAPP = '{\n    "content": {\n        "text": "This is test WhatsApp message"\n    }\n}'
EMAIL = (
    '{\n    "content": {\n        "subject": "This is a test subject",\n'
    '        "html": "<b>This is test html email message</b>",\n'
    '        "text": "This is test text email message"\n    }\n}'
)
EXAMPLES = [
    (f"/v1/users/{DEMO_ID}/message/sms", SMS, "38598123456"),
    (f"/v1/users/{DEMO_ID}/message/whatsapp", WHATSAPP, "38598123456"),
    (f"/v1/users/{DEMO_ID}/message/email", EMAIL, "ana.horvat@example.com"),
    (f"/v1/identities/{DEMO_ID}/person/message/sms", SMS, "38598123456"),
    (f"/v1/identities/{DEMO_ID}/person/message/whatsapp", SMS, "38598123456"),
    # The reference posts this example to /sms by mistake; its text says /email.
    (f"/v1/identities/{DEMO_ID}/person/message/email", EMAIL, "ana.horvat@example.com"),
]
DOCUMENTED_STATUS = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}


@pytest.mark.parametrize(("path", "body", "destination"), EXAMPLES)
def test_documented_example_answers_as_documented_then_delivers(
    server: Server, path: str, body: str, destination: str
) -> None:
    with httpx.Client(base_url=server.base_url, follow_redirects=True) as client:
        response = client.post(path, content=body, headers=HEADERS)
        assert response.status_code == 200, response.text
        [message] = response.json()["messages"]
        assert message["status"] == DOCUMENTED_STATUS
        assert message["destination"] == destination
        again = client.post(path, content=body, headers=HEADERS)
        assert again.json() == response.json()
        client.headers["x-api-key"] = DEMO_KEY
        final = wait_for_final(client, message["messageId"])
    assert final["status"]["groupName"] == "DELIVERED"


def test_the_mistyped_email_to_person_example_gets_a_helpful_422(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        response = client.post(
            f"/v1/identities/{DEMO_ID}/person/message/sms",
            content=EMAIL,
            headers={**HEADERS, "idempotency-key": "typo-example"},
        )
    assert response.status_code == 422
    assert f"/v1/identities/{DEMO_ID}/person/message/email" in response.json()["detail"]
