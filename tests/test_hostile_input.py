"""Hostile bodies get a clear 4xx on every route that takes one, never a 500.

Invalid UTF-8 and JSON nested past what msgspec decodes are malformed JSON (400); free-form
`data` is bounded in depth and size (422); a request without a valid key is answered 401
before its body is looked at, and a webhook with a wrong token likewise. The routes are read
from the server's own OpenAPI document, so a route added later is covered by these tests.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pigeon.webhooks import twilio
from tests.conftest import DEMO_ID, DEMO_KEY, Server, make_server

# A lone 0xff; "/" encoded in two bytes (overlong); a UTF-16 surrogate encoded in UTF-8.
INVALID_UTF8 = {
    "lone byte": b"\xff",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
}
TOO_DEEP = b"[" * 5000 + b"]" * 5000
LITESTARS_SEND = ("POST", f"/v1/users/{DEMO_ID}/message/sms/")  # not the fast path
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
Route = tuple[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("hostile"), PIGEON_MAX_DATA_BYTES="2048")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def path_values(served: Server) -> dict[str, str]:
    """A real value for each path parameter of the document: the demo tenant's rows."""
    with served.client(DEMO_KEY) as client:
        hooks = client.get("/v1/extensions/infobip").json()["webhooks"]
        endpoint = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/h"})
        assert endpoint.status_code == 201, endpoint.text
    owner, token = hooks["inbound"].rsplit("/", 3)[1:3]
    return {
        "user_id": DEMO_ID,
        "identity_id": DEMO_ID,
        "message_id": "1795854949169642417726",
        "event_id": "evt_0",
        "endpoint_id": endpoint.json()["id"],
        "owner": owner,
        "token": token,
    }


@pytest.fixture(scope="module")
def operations(served: Server, path_values: dict[str, str]) -> list[dict[str, Any]]:
    """Every operation of the server's own OpenAPI document, its path filled in."""
    with served.client() as client:
        document = client.get("/openapi.json").json()
    found = []
    for template, item in document["paths"].items():
        path = re.sub(r"{(\w+)}", lambda m: path_values[m.group(1)], template)
        for method, operation in item.items():
            found.append({**operation, "method": method.upper(), "path": path})
    return found


@pytest.fixture(scope="module")
def with_body(operations: list[dict[str, Any]]) -> list[Route]:
    """Every route that takes a JSON body (and Litestar's own send route)."""
    routes = [(o["method"], o["path"]) for o in operations if "requestBody" in o]
    # users and identities (2 each), the extension, nine sends, two webhooks, three of the
    # webhook endpoints'
    assert len(routes) >= 17, routes
    return [*routes, LITESTARS_SEND]


@pytest.fixture(scope="module")
def authenticated(operations: list[dict[str, Any]]) -> list[Route]:
    """Every route that takes an API key, whatever its method."""
    routes = [(o["method"], o["path"]) for o in operations if o.get("security") != [{}]]
    assert len(routes) >= 34, routes
    return [*routes, LITESTARS_SEND]


@pytest.fixture(scope="module")
def webhooks(operations: list[dict[str, Any]]) -> list[str]:
    """The demo tenant's Infobip webhook paths."""
    return [o["path"] for o in operations if o["path"].startswith("/v1/webhooks/infobip/")]


def test_invalid_utf8_is_malformed_json_on_every_route(
    served: Server, with_body: list[Route]
) -> None:
    with served.client(DEMO_KEY) as client:
        for method, path in with_body:
            for name, raw in INVALID_UTF8.items():
                body = b'{"username": "a' + raw + b'", "content": {"text": "x' + raw + b'"}}'
                answer = client.request(method, path, content=body, headers=JSON)
                assert answer.status_code == 400, (method, path, name, answer.text)
                assert answer.json()["code"] == "malformed_json"
                assert answer.headers["content-type"] == "application/problem+json"
                # The offset is the body's own (msgspec counts from the string it read).
                where = body.index(raw)
                detail = f"the request body is not valid UTF-8 (byte {where})"
                assert answer.json()["detail"] == detail, (method, path, name)
                # Holding a NUL too (the NUL check decodes such a body first): still a 400.
                with_nul = body.replace(b'"a', b'"\\u0000a')
                answer = client.request(method, path, content=with_nul, headers=JSON)
                assert answer.status_code == 400, (method, path, name, answer.text)


def test_json_nested_past_the_decoder_is_malformed_json_on_every_route(
    served: Server, with_body: list[Route]
) -> None:
    with served.client(DEMO_KEY) as client:
        for method, path in with_body:
            for body in (TOO_DEEP, b'["\\u0000",' + TOO_DEEP + b"]"):
                answer = client.request(method, path, content=body, headers=JSON)
                assert answer.status_code == 400, (method, path, answer.text)
                assert answer.json()["code"] == "malformed_json"
                assert "nested too deeply" in answer.json()["detail"]


def _nested(levels: int) -> dict[str, object]:
    """`data` holding `levels` containers in all, itself the first."""
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("resource", ["/v1/users", "/v1/identities"])
def test_data_is_bounded_in_depth_and_size(served: Server, resource: str) -> None:
    with served.client(DEMO_KEY) as client:
        create = (
            {"username": f"deep-{resource[4:]}"} if resource == "/v1/users" else {"type": "neutral"}
        )
        created = client.post(resource, json={**create, "data": _nested(32)})
        assert created.status_code == 201, created.text
        row = f"{resource}/{created.json()['id']}"
        for method, path, extra in (("POST", resource, create), ("PATCH", row, {})):
            deep = client.request(method, path, json={**extra, "data": _nested(33)})
            assert deep.status_code == 422, deep.text
            assert deep.json()["code"] == "data_too_deep"
            assert deep.json()["errors"][0]["field"] == "data"
            big = client.request(method, path, json={**extra, "data": {"x": "y" * 2100}})
            assert big.status_code == 422, big.text
            assert big.json()["code"] == "data_too_large"
            assert "2048 bytes" in big.json()["detail"]
        assert client.get(row).json()["data"] == _nested(32)


def test_the_data_limit_defaults_to_64_kib(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        with server.client(DEMO_KEY) as client:
            fits = client.post("/v1/users", json={"username": "fits", "data": {"x": "y" * 65000}})
            assert fits.status_code == 201
            over = client.post("/v1/users", json={"username": "over", "data": {"x": "y" * 65600}})
            assert over.status_code == 422
            assert over.json()["code"] == "data_too_large"
            # Deep enough to trouble an encoder later, not too deep to decode: refused.
            deeper = json.dumps({"username": "deeper", "data": _nested(600)})
            refused = client.post("/v1/users", content=deeper, headers=JSON)
            assert refused.status_code == 422
            assert refused.json()["code"] == "data_too_deep"
    finally:
        server.stop()


@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_no_valid_key_is_401_before_the_body_is_read(
    served: Server, authenticated: list[Route], key: str | None
) -> None:
    headers = {**JSON, **({"x-api-key": key} if key else {})}
    with httpx.Client(base_url=served.base_url, headers=headers) as client:
        for method, path in authenticated:
            for body in (b"{not json", b'{"a": "\xff"}', TOO_DEEP, b'{"unknown": 1}'):
                answer = client.request(method, path, content=body)
                assert answer.status_code == 401, (method, path, body[:10], answer.text)
                expected = "invalid_api_key" if key else "missing_api_key"
                assert answer.json()["code"] == expected


def test_a_wrong_webhook_token_is_401_before_the_body_is_read(
    served: Server, webhooks: list[str]
) -> None:
    with httpx.Client(base_url=served.base_url, headers=JSON) as client:
        for path in webhooks:
            owner, _token, kind = path.rsplit("/", 3)[1:]
            forged = path.replace(f"/{_token}/", "/forged-token/")
            for body in (b"{not json", b'{"a": "\xff"}', TOO_DEEP, b'{"results": 1}'):
                answer = client.post(forged, content=body)
                assert answer.status_code == 401, (forged, body[:10], answer.text)
                assert answer.json()["code"] == "invalid_webhook_token"
            assert owner
            assert kind in ("reports", "inbound")


def test_a_body_past_10_mb_is_413(served: Server, webhooks: list[str]) -> None:
    body = b'{"content": {"text": "' + b"x" * 10_000_000 + b'"}}'
    with served.client(DEMO_KEY) as client:
        routes = [
            ("POST", "/v1/users"),
            ("POST", f"/v1/users/{DEMO_ID}/message/sms"),  # the fast path
            ("POST", "/v1/webhook-endpoints"),
            ("POST", webhooks[0]),
        ]
        for method, path in routes:
            answer = client.request(method, path, content=body, headers=JSON)
            assert answer.status_code == 413, (path, answer.text)
            assert answer.json()["code"] == "payload_too_large"


def test_twilio_callbacks_are_authenticated_then_bounded(
    served: Server, path_values: dict[str, str]
) -> None:
    platform = served.cli("webhooks")
    token = next(line.rsplit("/", 2)[1] for line in platform.splitlines() if "/reports" in line)
    status = f"/v1/webhooks/twilio/platform/{token}/status"
    with httpx.Client(base_url=served.base_url, headers=FORM) as client:
        huge = b"MessageSid=SM1&x=" + b"y" * (twilio.MAX_BYTES + 1)
        many = "&".join(f"p{i}=v" for i in range(twilio.MAX_FIELDS + 1)).encode()
        forged = [
            status.replace(f"/{token}/", "/forged-token/"),
            status.replace("/platform/", f"/{path_values['owner']}/"),  # Twilio's is the platform's
        ]
        for path in forged:
            for body in (huge, many, b"MessageSid=SM1"):
                answer = client.post(path, content=body)
                assert answer.status_code == 401, (path, answer.text)
                assert answer.json()["code"] == "invalid_webhook_token"
        too_large = client.post(status, content=huge)
        assert too_large.status_code == 413, too_large.text
        assert too_large.json()["code"] == "payload_too_large"
        too_many = client.post(status, content=many)
        assert too_many.status_code == 400, too_many.text
        assert too_many.json()["code"] == "malformed_callback"
        unsigned = client.post(status, content=b"MessageSid=SM1&MessageStatus=delivered")
        assert unsigned.status_code == 401
        assert unsigned.json()["code"] == "invalid_twilio_signature"


def test_a_hostile_first_stream_message_is_a_missing_key(served: Server) -> None:
    url = served.base_url.replace("http://", "ws://") + "/v1/stream"

    async def first_answer(message: str | bytes) -> tuple[dict[str, Any], int | None]:
        async with connect(url, max_size=None) as ws:
            await ws.send(message)
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return answer, ws.close_code

    hostile = [
        "[" * 5000 + "]" * 5000,  # nested past the decoder
        json.dumps({"type": "subscribe", "realm": DEMO_KEY, "pad": "x" * 10_000}),  # too large
        b"\xff\xfe",  # binary
        "not json",
    ]
    for message in hostile:
        answer, code = asyncio.run(first_answer(message))
        assert answer["type"] == "error", message[:20]
        assert answer["realm"] == "Invalid Realm Key."
        assert code == 1008
    assert "Traceback" not in served.log_path.read_text()
