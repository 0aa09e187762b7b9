"""idempotency-key: a retried request is never sent twice."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import httpx

from pigeon.config import Settings
from pigeon.db.migrate import upgrade
from pigeon.demo import DEMO_ACCOUNT_ID, DEMO_API_KEY, DEMO_OBJECT_ID
from pigeon.idempotency.store import fingerprint
from tests.conftest import DATABASES, Server, make_server
from tests.databases import execute, scalar
from tests.factories import create_tenant, make_user


def sms(api: httpx.Client, user_id: str, key: str, text: str = "once") -> httpx.Response:
    return api.post(
        f"/v1/users/{user_id}/message/sms",
        json={"content": {"text": text}},
        headers={"idempotency-key": key},
    )


def count_messages(api: httpx.Client, user_id: str) -> int:
    return len(api.get("/v1/messages", params={"recipient": user_id, "limit": 100}).json()["items"])


def test_same_key_same_body_replays_and_sends_nothing_again(api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    first = sms(api, user["id"], key)
    second = sms(api, user["id"], key)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert count_messages(api, user["id"]) == 1


def test_replay_ignores_json_key_order_and_whitespace(api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    url = f"/v1/users/{user['id']}/message/email"
    first = api.post(
        url,
        content=b'{"content": {"subject": "s", "text": "t"}}',
        headers={"idempotency-key": key, "content-type": "application/json"},
    )
    second = api.post(
        url,
        content=b'{"content":{"text":"t","subject":"s"}}',
        headers={"idempotency-key": key, "content-type": "application/json"},
    )
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json() == first.json()


def test_same_key_different_body_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    assert sms(api, user["id"], key, "one").status_code == 200
    response = sms(api, user["id"], key, "two")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert count_messages(api, user["id"]) == 1


def test_keys_are_scoped_to_path_and_account(server: Server, api: httpx.Client) -> None:
    user = make_user(api)
    other_user = make_user(api)
    key = "27373fabc392933deffda"
    first = sms(api, user["id"], key)
    other_path = sms(api, other_user["id"], key)
    assert other_path.json()["messages"][0]["messageId"] != first.json()["messages"][0]["messageId"]
    with server.client(create_tenant(server).api_key) as other_tenant:
        their_user = make_user(other_tenant)
        response = sms(other_tenant, their_user["id"], key)
        assert response.status_code == 200
        assert "idempotent-replayed" not in response.headers


def test_an_error_is_not_remembered(api: httpx.Client) -> None:
    user = make_user(api, channel={"email": "a@example.com"})
    key = uuid.uuid4().hex
    assert sms(api, user["id"], key).status_code == 422
    api.patch(f"/v1/users/{user['id']}", json={"channel": {"sms": "+385981112223"}})
    response = sms(api, user["id"], key)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers


def test_too_long_key_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    response = sms(api, user["id"], "k" * 256)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_idempotency_key"
    assert sms(api, user["id"], "k" * 255).status_code == 200


def test_an_expired_key_is_a_new_request(server: Server, api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    first = sms(api, user["id"], key, "one")
    assert first.status_code == 200
    # Age the record past its TTL (at least a minute in a real run).
    changed = execute(
        server.env["PIGEON_DATABASE_URL"],
        f"UPDATE idempotency_keys SET expires_at = created_at WHERE key = '{key}'",
    )
    assert changed == 1
    second = sms(api, user["id"], key, "two")
    assert second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert second.json()["messages"][0]["messageId"] != first.json()["messages"][0]["messageId"]
    third = sms(api, user["id"], key, "two")
    assert third.headers["idempotent-replayed"] == "true"
    assert third.content == second.content
    assert count_messages(api, user["id"]) == 2


def test_concurrent_retries_send_once(server: Server, api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    headers = {"x-api-key": api.headers["x-api-key"], "idempotency-key": key}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "burst"}}
                    )
                    for _ in range(30)
                ]
            )

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} <= {200, 409}
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "idempotency_request_in_flight"
            assert response.headers["retry-after"] == "1"
    ids = {r.json()["messages"][0]["messageId"] for r in responses if r.status_code == 200}
    assert len(ids) == 1
    assert count_messages(api, user["id"]) == 1


def test_retries_mixed_with_new_requests_replay_and_the_rest_are_stored_once(
    server: Server, api: httpx.Client
) -> None:
    # Retries arrive in the same batches as new requests: each retry replays its first answer
    # (or 422s on a changed body), and each new request is stored once.
    user = make_user(api)
    path = f"/v1/users/{user['id']}/message/sms"
    old = [uuid.uuid4().hex for _ in range(4)]
    first = {key: sms(api, user["id"], key, "old") for key in old}
    new = [uuid.uuid4().hex for _ in range(40)]
    headers = {"x-api-key": api.headers["x-api-key"]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            sends = [(key, "old") for key in old[:3]] + [(old[3], "changed")]
            sends += [(key, "new") for key in new]
            sends.sort(key=lambda send: send[0])  # retries spread among the new ones
            return await asyncio.gather(
                *[
                    client.post(
                        path,
                        json={"content": {"text": text}},
                        headers={"idempotency-key": key},
                    )
                    for key, text in sends
                ]
            )

    by_key = {r.request.headers["idempotency-key"]: r for r in asyncio.run(burst())}
    for key in old[:3]:
        assert by_key[key].status_code == 200
        assert by_key[key].headers["idempotent-replayed"] == "true"
        assert by_key[key].content == first[key].content
    assert by_key[old[3]].status_code == 422
    assert by_key[old[3]].json()["code"] == "idempotency_key_reused"
    for key in new:
        assert by_key[key].status_code == 200, by_key[key].text
        assert "idempotent-replayed" not in by_key[key].headers
    ids = {by_key[key].json()["messages"][0]["messageId"] for key in new}
    assert len(ids) == len(new)
    listed = api.get("/v1/messages", params={"recipient": user["id"], "limit": 100}).json()
    assert len(listed["items"]) == len(old) + len(new)
    assert {m["messageId"] for m in listed["items"]} >= ids


def test_patch_is_idempotent_too(api: httpx.Client) -> None:
    user = make_user(api)
    key = uuid.uuid4().hex
    body = {"data": {"n": 1}}
    first = api.patch(f"/v1/users/{user['id']}", json=body, headers={"idempotency-key": key})
    api.patch(f"/v1/users/{user['id']}", json={"data": {"n": 2}})
    replay = api.patch(f"/v1/users/{user['id']}", json=body, headers={"idempotency-key": key})
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert api.get(f"/v1/users/{user['id']}").json()["data"] == {"n": 2}


def test_a_request_accepted_before_the_binary_scope_upgrade_is_replayed_after_it(
    tmp_path: Path,
) -> None:
    # Until migration 0004 a record's scope was the SHA-256 of (account, method, path, key)
    # as 64 hex characters; now it is the digest's first 16 bytes. A request accepted just
    # before the upgrade and retried just after must replay, not send again.
    settings = Settings(database_url=DATABASES.new_url(tmp_path))
    upgrade(settings, "0003")
    path = f"/v1/users/{DEMO_OBJECT_ID}/message/sms"
    body = b'{"content": {"text": "before the upgrade"}}'
    key = "accepted-before-0004"
    old_scope = hashlib.sha256("\x1f".join((DEMO_ACCOUNT_ID, "POST", path, key)).encode())
    answer = '{"messages":[{"messageId":"accepted-by-the-older-version"}]}'
    far = "2999-01-01 00:00:00" + ("+00" if DATABASES.engine == "postgresql" else ".000000")
    execute(
        settings.database_url,
        "INSERT INTO idempotency_keys (scope, account_id, method, path, key, fingerprint,"
        " status_code, response_body, created_at, expires_at) VALUES"
        f" ('{old_scope.hexdigest()}', '{DEMO_ACCOUNT_ID}', 'POST', '{path}', '{key}',"
        f" '{fingerprint(body)}', 200, '{answer}', '{far}', '{far}')",
    )

    server = make_server(tmp_path, PIGEON_DATABASE_URL=settings.database_url)
    server.start()  # upgrades to the latest revision first
    try:
        with server.client(DEMO_API_KEY) as client:
            retried = client.post(
                path,
                content=body,
                headers={"idempotency-key": key, "content-type": "application/json"},
            )
            sent = client.get("/v1/messages", params={"recipient": DEMO_OBJECT_ID}).json()
    finally:
        server.stop()
    assert retried.status_code == 200
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.text == answer
    assert sent["items"] == []
    stored = scalar(settings.database_url, "SELECT scope FROM idempotency_keys")
    assert bytes(stored) == old_scope.digest()[:16]
