"""Hostile bodies get a clear 4xx on every route that takes one, never a 500.

Invalid UTF-8 and JSON nested past what msgspec decodes are malformed JSON (400); free-form
`data` is bounded in depth and size (422); a request without a valid key is answered 401
before its body is looked at, and a webhook with a wrong token likewise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_ID, DEMO_KEY, Server, make_server

# A lone 0xff; "/" encoded in two bytes (overlong); a UTF-16 surrogate encoded in UTF-8.
INVALID_UTF8 = {
    "lone byte": b"\xff",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
}
TOO_DEEP = b"[" * 5000 + b"]" * 5000
SENDS = (
    [f"/v1/users/{DEMO_ID}/message/{channel}" for channel in ("sms", "whatsapp", "email")]
    + [
        f"/v1/identities/{DEMO_ID}/person/message/{channel}"
        for channel in ("sms", "whatsapp", "email")
    ]
    + [f"/v1/apps/message/{channel}" for channel in ("sms", "whatsapp", "email")]
)
AUTHENTICATED = [
    ("POST", "/v1/users"),
    ("PATCH", f"/v1/users/{DEMO_ID}"),
    ("POST", "/v1/identities"),
    ("PATCH", f"/v1/identities/{DEMO_ID}"),
    ("PUT", "/v1/extensions/infobip"),
    *(("POST", path) for path in SENDS),
    *(("POST", f"{path}/") for path in SENDS[:1]),  # Litestar's own route, not the fast path
]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("hostile"), PIGEON_MAX_DATA_BYTES="2048")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def webhooks(served: Server) -> list[str]:
    """The demo tenant's two webhook paths."""
    with served.client(DEMO_KEY) as client:
        urls = client.get("/v1/extensions/infobip").json()["webhooks"]
    return [url.removeprefix(served.base_url) for url in urls.values()]


def _all_routes(webhooks: list[str]) -> list[tuple[str, str]]:
    return AUTHENTICATED + [("POST", path) for path in webhooks]


def test_invalid_utf8_is_malformed_json_on_every_route(served: Server, webhooks: list[str]) -> None:
    with served.client(DEMO_KEY) as client:
        for method, path in _all_routes(webhooks):
            for name, raw in INVALID_UTF8.items():
                body = b'{"username": "a' + raw + b'", "content": {"text": "x' + raw + b'"}}'
                answer = client.request(method, path, content=body, headers=JSON)
                assert answer.status_code == 400, (method, path, name, answer.text)
                assert answer.json()["code"] == "malformed_json"
                assert answer.headers["content-type"] == "application/problem+json"


def test_json_nested_past_the_decoder_is_malformed_json_on_every_route(
    served: Server, webhooks: list[str]
) -> None:
    with served.client(DEMO_KEY) as client:
        for method, path in _all_routes(webhooks):
            answer = client.request(method, path, content=TOO_DEEP, headers=JSON)
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
def test_no_valid_key_is_401_before_the_body_is_read(served: Server, key: str | None) -> None:
    headers = {**JSON, **({"x-api-key": key} if key else {})}
    with httpx.Client(base_url=served.base_url, headers=headers) as client:
        for method, path in AUTHENTICATED:
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
        for method, path in [*AUTHENTICATED[:1], *AUTHENTICATED[5:6], ("POST", webhooks[0])]:
            answer = client.request(method, path, content=body, headers=JSON)
            assert answer.status_code == 413, (path, answer.text)
            assert answer.json()["code"] == "payload_too_large"
