"""The OpenAPI document says what Pigeon does: its errors, headers, examples and limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DEMO_ID, Server

PROBLEM_FIELDS = {"type", "title", "status", "code", "detail", "instance", "errors"}
WEBHOOKS = "/v1/webhooks/"
PENDING_ACCEPTED = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    with server.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_error_is_documented_as_problem_details(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == PROBLEM_FIELDS
    assert set(problem["required"]) == {"type", "title", "status", "code", "detail"}
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }
            codes = {
                e["value"]["code"] for e in content["application/problem+json"]["examples"].values()
            }
            assert codes
            assert all(f"`{code}`" in response["description"] for code in codes)


def test_every_operation_documents_the_errors_it_can_answer(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        statuses = set(operation["responses"])
        if operation.get("security") != [{}]:  # an API key: without one, 401
            assert "401" in statuses, (method, path)
            assert "503" in statuses, (method, path)
        elif not path.startswith(WEBHOOKS):
            continue  # /health, /ready
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= statuses, (method, path)
        if "{" in path and not path.startswith(WEBHOOKS):
            assert "404" in statuses, (method, path)
        if any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert "422" in statuses, (method, path)
    assert (
        "409"
        in dict(((m, p), o) for m, p, o in operations(document))[("POST", "/v1/users")]["responses"]
    )


def test_idempotency_and_retry_headers_are_documented(document: dict[str, Any]) -> None:
    idempotent = 0
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status in {"409", "503"}:
                assert "Retry-After" in response["headers"], (method, path, status)
        if method not in {"POST", "PATCH"} or path.startswith(WEBHOOKS):
            continue
        idempotent += 1
        [header] = [p for p in operation["parameters"] if p["name"] == "idempotency-key"]
        assert header["in"] == "header"
        assert not header["required"]
        assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (1, 255)
        [success] = [r for s, r in operation["responses"].items() if s.startswith("2")]
        assert "idempotent-replayed" in success["headers"], (method, path)
    assert idempotent >= 13  # users and identities: create and update; the nine sends


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from _strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from _strings(child)


def _examples(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in {"example", "examples"}:
                yield child
            yield from _examples(child)
    elif isinstance(value, list):
        for child in value:
            yield from _examples(child)


def test_examples_are_the_docs_values_not_generated_filler(document: dict[str, Any]) -> None:
    # Litestar's generated examples are runs of random letters like "JxsvJnicHImAYyNsCOKF".
    filler = re.compile(r"^(?=.*[a-z])(?=(?:.*[A-Z]){3})[A-Za-z]{10,}$")
    examples = list(_examples(document))
    assert examples
    for text in _strings(examples):
        assert not filler.match(text), text
    send = document["paths"]["/v1/users/{user_id}/message/sms"]["post"]
    [answer] = send["responses"]["200"]["content"]["application/json"]["examples"].values()
    assert answer["value"]["messages"][0]["status"] == PENDING_ACCEPTED
    [user_id] = [p for p in send["parameters"] if p["name"] == "user_id"]
    assert [e["value"] for e in user_id["examples"].values()] == [DEMO_ID]


def _text_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]["properties"]["text"]  # type: ignore[no-any-return]


def test_the_documented_text_limits_are_the_servers(
    document: dict[str, Any], demo: httpx.Client
) -> None:
    sms_max = _text_schema(document, "TextContent")["maxLength"]
    assert sms_max == 1600
    whatsapp_max = _text_schema(document, "WhatsAppContent")["maxLength"]
    url = f"/v1/users/{DEMO_ID}/message"
    assert demo.post(f"{url}/sms", json={"content": {"text": "x" * sms_max}}).status_code == 200
    too_long = demo.post(f"{url}/sms", json={"content": {"text": "x" * (sms_max + 1)}})
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "content.text"
    whatsapp = {"content": {"text": "x" * (whatsapp_max + 1)}}
    assert demo.post(f"{url}/whatsapp", json=whatsapp).status_code == 422


def test_a_documented_problem_is_what_the_server_answers(
    document: dict[str, Any], server: Server
) -> None:
    responses = document["paths"]["/v1/users"]["get"]["responses"]
    examples = responses["401"]["content"]["application/problem+json"]["examples"].values()
    documented = next(e["value"] for e in examples if e["value"]["code"] == "missing_api_key")
    with server.client() as anonymous:
        response = anonymous.get("/v1/users")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert {k: v for k, v in response.json().items() if k != "instance"} == documented


WHATSAPP_SENDS = [
    "/v1/users/{user_id}/message/whatsapp",
    "/v1/identities/{identity_id}/person/message/whatsapp",
    "/v1/apps/message/whatsapp",
]


def _body_examples(operation: dict[str, Any]) -> list[Any]:
    return operation["requestBody"]["content"]["application/json"]["schema"]["examples"]  # type: ignore[no-any-return]


def _problem_codes(operation: dict[str, Any], status: str) -> dict[str, Any]:
    examples = operation["responses"][status]["content"]["application/problem+json"]["examples"]
    return {e["value"]["code"]: e["value"] for e in examples.values()}


def test_orangepill_template_form_is_documented_and_its_example_sends(
    document: dict[str, Any], demo: httpx.Client
) -> None:
    content = document["components"]["schemas"]["WhatsAppContent"]["properties"]
    assert {"text", "template", "templateName", "templateData", "language"} <= set(content)
    for path in WHATSAPP_SENDS:
        operation = document["paths"][path]["post"]
        [orangepill] = [e for e in _body_examples(operation) if "templateName" in e["content"]]
        assert orangepill["content"]["templateData"] == {"body": {"placeholders": ["Ana"]}}
        assert orangepill["content"]["language"] == "en"
        assert ("to" in orangepill) == path.startswith("/v1/apps/")
        errors = operation["responses"]["422"]["content"]["application/problem+json"]["examples"]
        fields = {f["field"] for e in errors.values() for f in e["value"].get("errors") or []}
        assert "content.language" in fields, path
    url = f"/v1/users/{DEMO_ID}/message/whatsapp"
    [example] = [
        e
        for e in _body_examples(document["paths"][WHATSAPP_SENDS[0]]["post"])
        if "templateName" in e["content"]
    ]
    sent = demo.post(url, json=example)
    assert sent.status_code == 200, sent.text
    missing = demo.post(url, json={"content": {"templateName": "welcome_multiple_languages"}})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "content.language"


def test_the_person_sub_resource_is_documented(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/identities/{identity_id}/person"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["allOf"] == [{"$ref": "#/components/schemas/Person"}]
    [example] = body["examples"]
    assert {"firstName", "lastName", "contactInformation"} <= set(example)
    [answer] = operation["responses"]["200"]["content"]["application/json"]["examples"].values()
    assert answer["value"]["type"] == "person"
    assert "idempotent-replayed" in operation["responses"]["200"]["headers"]
    assert "identity_not_found" in _problem_codes(operation, "404")
    invalid = _problem_codes(operation, "422")["invalid_phone"]
    assert invalid["errors"][0]["field"] == "contactInformation.phone[0].number"
    assert {"400", "401", "409", "413", "503"} <= set(operation["responses"])


def test_head_health_and_the_message_filters_are_documented(document: dict[str, Any]) -> None:
    health = document["paths"]["/health"]
    assert set(health) == {"get", "head"}
    assert health["head"]["security"] == [{}]
    assert "200" in health["head"]["responses"]
    parameters = {p["name"]: p for p in document["paths"]["/v1/messages"]["get"]["parameters"]}
    assert parameters["from"]["schema"]["format"] == "date-time"
    assert parameters["to"]["schema"]["format"] == "date-time"
    assert "+" in parameters["recipient"]["description"]
    listed = document["paths"]["/v1/messages"]["get"]
    fields = {
        f["field"]
        for e in listed["responses"]["422"]["content"]["application/problem+json"][
            "examples"
        ].values()
        for f in e["value"].get("errors") or []
    }
    assert {"recipient", "from"} <= fields


def _codes(operation: dict[str, Any], status: str) -> set[str]:
    response = operation["responses"].get(status)
    if response is None:
        return set()
    examples = response["content"]["application/problem+json"]["examples"].values()
    return {e["value"]["code"] for e in examples}


def _details(operation: dict[str, Any], status: str) -> list[str]:
    examples = operation["responses"][status]["content"]["application/problem+json"]["examples"]
    return [e["value"]["detail"] for e in examples.values()]


def test_the_input_limits_are_documented_where_they_apply(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        where = (method, path)
        assert _codes(operation, "431") == {"headers_too_large"}, where
        assert _codes(operation, "408") == {"request_timeout"}, where
        if "requestBody" in operation:
            assert "malformed_json" in _codes(operation, "400"), where
            details = " | ".join(_details(operation, "400"))
            assert "not valid UTF-8" in details, where
            assert "nested too deeply" in details, where
            assert _codes(operation, "413") == {"payload_too_large"}, where
        if any(p["name"] == "cursor" for p in operation.get("parameters", [])):
            assert "invalid_cursor" in _codes(operation, "422"), where
        if operation.get("security") != [{}]:
            assert _codes(operation, "503") == {"database_unavailable"}, where
            assert "Retry-After" in operation["responses"]["503"]["headers"], where
    paths = document["paths"]
    for path, method in [("/v1/users", "post"), ("/v1/identities/{identity_id}", "patch")]:
        assert {"data_too_deep", "data_too_large"} <= _codes(paths[path][method], "422")
    reports = paths["/v1/webhooks/infobip/{owner}/{token}/reports"]["post"]
    assert any("results" in d and "1000" in d for d in _details(reports, "422"))
    twilio = paths["/v1/webhooks/twilio/{owner}/{token}/status"]["post"]
    assert {"payload_too_large"} == _codes(twilio, "413")
    assert "65,536" in twilio["responses"]["413"]["description"]
