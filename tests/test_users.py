"""/v1/users: create, read, list, update and delete Users; idempotency keys; authentication."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.factories import Tenant, create_tenant, make_person, make_user, unique_phone

PROBLEM_KEYS = {"type", "title", "status", "code", "detail", "instance"}
MISSING_ID = "0" * 24


def assert_problem(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """Assert an RFC 9457 problem answer; when `field` is given, errors[0] must name it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code
    if field is not None:
        assert body["errors"][0]["field"] == field, body
        assert body["errors"][0]["message"]
    return body


def new_username() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def create(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return client.post("/v1/users", json=body, **kwargs)


def list_all(client: httpx.Client, limit: int) -> list[dict[str, Any]]:
    """Every user of the tenant, following next_cursor page by page."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        response = client.get("/v1/users", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError("paging never ended")


@pytest.fixture(scope="module")
def scratch(server: Server) -> Iterator[httpx.Client]:
    """A tenant shared by tests whose requests leave nothing another test could see."""
    with server.client(create_tenant(server).api_key) as client:
        yield client


@pytest.fixture
def other(server: Server) -> Iterator[httpx.Client]:
    """A client of a second, unrelated tenant."""
    with server.client(create_tenant(server).api_key) as client:
        yield client


# --- create -------------------------------------------------------------------------------


def test_create_returns_201_and_the_full_user(api: httpx.Client) -> None:
    phone = unique_phone()
    body = {
        "username": "ana",
        "data": {"plan": "gold", "nested": {"n": [1, 2]}},
        "channel": {"sms": phone, "whatsapp": phone, "email": "ana@example.com"},
    }
    response = create(api, body)
    assert response.status_code == 201, response.text
    user = response.json()
    assert set(user) == {
        "id",
        "username",
        "data",
        "channel",
        "identity",
        "active",
        "created_at",
        "updated_at",
    }
    assert re.fullmatch(r"[0-9a-f]{24}", user["id"])
    assert user["username"] == "ana"
    assert user["data"] == {"plan": "gold", "nested": {"n": [1, 2]}}
    assert user["channel"] == {"sms": phone, "whatsapp": phone, "email": "ana@example.com"}
    assert user["identity"] is None
    assert user["active"] is True
    created = datetime.fromisoformat(user["created_at"])
    assert created.tzinfo is not None
    assert user["updated_at"] == user["created_at"]


def test_create_with_only_username_fills_defaults(api: httpx.Client) -> None:
    user = create(api, {"username": "minimal"}).json()
    assert user["data"] == {}
    assert user["channel"] == {"sms": None, "whatsapp": None, "email": None}
    assert user["identity"] is None
    assert user["active"] is True


def test_create_inactive_user(api: httpx.Client) -> None:
    user = create(api, {"username": "sleepy", "active": False}).json()
    assert user["active"] is False


def test_created_ids_are_unique(api: httpx.Client) -> None:
    ids = {make_user(api)["id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    "raw", ["+385 98 123 456", "+38598123456", "38598123456", "0038598123456", " 385981234 56 "]
)
@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_phone_is_normalised_to_digits(scratch: httpx.Client, channel: str, raw: str) -> None:
    response = create(scratch, {"username": new_username(), "channel": {channel: raw}})
    assert response.status_code == 201, response.text
    assert response.json()["channel"][channel] == "38598123456"


@pytest.mark.parametrize("raw", ["12345", "not a phone", "+385 98", "+999 1234567", ""])
@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_invalid_phone_is_422_naming_the_channel(
    scratch: httpx.Client, channel: str, raw: str
) -> None:
    response = create(scratch, {"username": new_username(), "channel": {channel: raw}})
    assert_problem(response, 422, "invalid_phone", field=f"channel.{channel}")


def test_invalid_phone_creates_nothing(api: httpx.Client) -> None:
    create(api, {"username": "nobody", "channel": {"sms": "12345"}})
    assert api.get("/v1/users").json()["items"] == []


@pytest.mark.parametrize("raw", ["not-an-email", "ana@", "@example.com", "ana@@example.com", ""])
def test_invalid_email_is_422_naming_the_channel(scratch: httpx.Client, raw: str) -> None:
    response = create(scratch, {"username": new_username(), "channel": {"email": raw}})
    assert_problem(response, 422, "invalid_email", field="channel.email")


def test_unknown_channel_field_is_422(scratch: httpx.Client) -> None:
    response = create(scratch, {"username": "ana", "channel": {"fax": "38598123456"}})
    assert_problem(response, 422, "validation_error", field="channel.fax")


def test_unknown_top_level_field_is_422(scratch: httpx.Client) -> None:
    response = create(scratch, {"username": "ana", "nickname": "an"})
    assert_problem(response, 422, "validation_error", field="nickname")


def test_missing_username_is_422(scratch: httpx.Client) -> None:
    response = create(scratch, {"data": {}})
    assert_problem(response, 422, "validation_error", field="username")


@pytest.mark.parametrize("username", ["", "x" * 201, 42, None])
def test_bad_username_is_422(scratch: httpx.Client, username: Any) -> None:
    response = create(scratch, {"username": username})
    assert_problem(response, 422, "validation_error", field="username")


def test_username_of_200_characters_is_accepted(api: httpx.Client) -> None:
    response = create(api, {"username": "x" * 200})
    assert response.status_code == 201, response.text
    assert response.json()["username"] == "x" * 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ana", "active": "yes"}, "active"),
        ({"username": "ana", "data": ["not", "an", "object"]}, "data"),
        ({"username": "ana", "channel": "38598123456"}, "channel"),
        ({"username": "ana", "channel": {"sms": 38598123456}}, "channel.sms"),
    ],
)
def test_wrong_type_is_422(scratch: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_problem(create(scratch, body), 422, "validation_error", field=field)


def test_malformed_json_is_400(scratch: httpx.Client) -> None:
    response = scratch.post(
        "/v1/users", content=b'{"username": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_json")


def test_taken_username_is_409(api: httpx.Client) -> None:
    make_user(api, username="taken")
    response = create(api, {"username": "taken"})
    assert_problem(response, 409, "username_taken")
    assert len(api.get("/v1/users").json()["items"]) == 1


def test_another_account_may_use_the_same_username(api: httpx.Client, other: httpx.Client) -> None:
    make_user(api, username="shared-name")
    response = create(other, {"username": "shared-name"})
    assert response.status_code == 201, response.text


def test_create_linked_to_own_identity(api: httpx.Client) -> None:
    person = make_person(api)
    user = make_user(api, identity=person["id"])
    assert user["identity"] == person["id"]
    assert api.get(f"/v1/users/{user['id']}").json()["identity"] == person["id"]


@pytest.mark.parametrize("identity", [MISSING_ID, "not-an-id", ""])
def test_create_linked_to_unknown_identity_is_422(scratch: httpx.Client, identity: str) -> None:
    response = create(scratch, {"username": "ana", "identity": identity})
    assert_problem(response, 422, "identity_not_found", field="identity")


def test_create_linked_to_another_tenants_identity_is_422(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_person(other)
    response = create(api, {"username": "ana", "identity": foreign["id"]})
    assert_problem(response, 422, "identity_not_found", field="identity")


# --- read -----------------------------------------------------------------------------------


def test_get_returns_the_created_user(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.get(f"/v1/users/{user['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == user


@pytest.mark.parametrize("user_id", [MISSING_ID, "nope", "ABCDEF0123456789ABCDEF01", "1" * 25])
def test_get_missing_user_is_404(scratch: httpx.Client, user_id: str) -> None:
    assert_problem(scratch.get(f"/v1/users/{user_id}"), 404, "user_not_found")


def test_another_tenants_user_looks_exactly_like_a_missing_one(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_user(other)
    hidden = assert_problem(api.get(f"/v1/users/{foreign['id']}"), 404, "user_not_found")
    missing = assert_problem(api.get(f"/v1/users/{MISSING_ID}"), 404, "user_not_found")
    assert set(hidden) == set(missing)
    assert hidden["title"] == missing["title"]
    assert hidden["detail"] == missing["detail"].replace(MISSING_ID, foreign["id"])


# --- list -----------------------------------------------------------------------------------


def test_list_of_a_new_tenant_is_empty(api: httpx.Client) -> None:
    response = api.get("/v1/users")
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


def test_list_is_oldest_first(api: httpx.Client) -> None:
    created = [make_user(api)["id"] for _ in range(6)]
    page = api.get("/v1/users").json()
    assert [u["id"] for u in page["items"]] == created
    assert page["next_cursor"] is None


def test_list_items_equal_single_gets(api: httpx.Client) -> None:
    user = make_user(api)
    assert api.get("/v1/users").json()["items"] == [user]


def test_list_shows_only_the_tenants_own_users(api: httpx.Client, other: httpx.Client) -> None:
    mine = make_user(api)
    make_user(other)
    assert [u["id"] for u in api.get("/v1/users").json()["items"]] == [mine["id"]]


def test_paging_returns_every_user_exactly_once(api: httpx.Client) -> None:
    created = {make_user(api)["id"] for _ in range(7)}
    seen = [u["id"] for u in list_all(api, limit=3)]
    assert len(seen) == len(created)
    assert set(seen) == created


def test_pages_respect_limit_and_last_page_has_no_cursor(api: httpx.Client) -> None:
    for _ in range(5):
        make_user(api)
    first = api.get("/v1/users", params={"limit": 2}).json()
    assert len(first["items"]) == 2
    assert isinstance(first["next_cursor"], str)
    second = api.get("/v1/users", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(second["items"]) == 2
    third = api.get("/v1/users", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert len(third["items"]) == 1
    assert third["next_cursor"] is None


def test_default_page_size_is_20(api: httpx.Client) -> None:
    for _ in range(21):
        make_user(api)
    page = api.get("/v1/users").json()
    assert len(page["items"]) == 20
    assert page["next_cursor"] is not None


def test_limit_of_100_is_accepted(api: httpx.Client) -> None:
    make_user(api)
    response = api.get("/v1/users", params={"limit": 100})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
def test_limit_out_of_range_is_a_client_error(scratch: httpx.Client, limit: str) -> None:
    response = scratch.get("/v1/users", params={"limit": limit})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("cursor", ["garbage", "not-a-cursor!!", "zzzz", "%%%%"])
def test_garbage_cursor_is_422(scratch: httpx.Client, cursor: str) -> None:
    response = scratch.get("/v1/users", params={"cursor": cursor})
    assert_problem(response, 422, "invalid_cursor")


# --- update ---------------------------------------------------------------------------------


def patch(client: httpx.Client, user_id: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return client.patch(f"/v1/users/{user_id}", json=body, **kw)


def test_patch_channel_keeps_fields_left_out(api: httpx.Client) -> None:
    user = make_user(api)
    new_phone = unique_phone()
    response = patch(api, user["id"], {"channel": {"sms": new_phone}})
    assert response.status_code == 200, response.text
    assert response.json()["channel"] == {
        "sms": new_phone,
        "whatsapp": user["channel"]["whatsapp"],
        "email": user["channel"]["email"],
    }


def test_patch_channel_null_clears_only_that_field(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"channel": {"whatsapp": None}})
    assert response.status_code == 200, response.text
    channel = response.json()["channel"]
    assert channel == {**user["channel"], "whatsapp": None}
    assert api.get(f"/v1/users/{user['id']}").json()["channel"] == channel


def test_patch_empty_channel_changes_nothing(api: httpx.Client) -> None:
    user = make_user(api)
    assert patch(api, user["id"], {"channel": {}}).json()["channel"] == user["channel"]


def test_patch_channel_normalises_new_phone(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"channel": {"whatsapp": "00385 98 123 456"}})
    assert response.json()["channel"]["whatsapp"] == "38598123456"


def test_patch_invalid_phone_is_422_and_changes_nothing(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"username": "renamed", "channel": {"sms": "12345"}})
    assert_problem(response, 422, "invalid_phone", field="channel.sms")
    assert api.get(f"/v1/users/{user['id']}").json() == user


def test_patch_invalid_email_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"channel": {"email": "nope"}})
    assert_problem(response, 422, "invalid_email", field="channel.email")


def test_patch_unknown_channel_field_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"channel": {"fax": "38598123456"}})
    assert_problem(response, 422, "validation_error", field="channel.fax")


def test_patch_unknown_field_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    assert_problem(patch(api, user["id"], {"nickname": "x"}), 422, "validation_error", "nickname")


def test_patch_data_replaces_the_whole_object(api: httpx.Client) -> None:
    user = make_user(api, data={"plan": "gold", "seats": 3})
    response = patch(api, user["id"], {"data": {"tier": 2}})
    assert response.json()["data"] == {"tier": 2}


def test_patch_without_data_keeps_data(api: httpx.Client) -> None:
    user = make_user(api, data={"plan": "gold"})
    assert patch(api, user["id"], {"active": False}).json()["data"] == {"plan": "gold"}


def test_patch_username_and_active(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"username": "renamed", "active": False})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["username"] == "renamed"
    assert updated["active"] is False
    assert updated["channel"] == user["channel"]
    assert updated["data"] == user["data"]


def test_patch_to_a_taken_username_is_409(api: httpx.Client) -> None:
    make_user(api, username="first")
    second = make_user(api, username="second")
    assert_problem(patch(api, second["id"], {"username": "first"}), 409, "username_taken")
    assert api.get(f"/v1/users/{second['id']}").json()["username"] == "second"


def test_patch_to_own_username_is_fine(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"username": user["username"]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("username", ["", "x" * 201, None])
def test_patch_bad_username_is_422(api: httpx.Client, username: Any) -> None:
    user = make_user(api)
    assert_problem(patch(api, user["id"], {"username": username}), 422, "validation_error")


def test_patch_links_and_unlinks_identity(api: httpx.Client) -> None:
    user = make_user(api)
    person = make_person(api)
    assert patch(api, user["id"], {"identity": person["id"]}).json()["identity"] == person["id"]
    assert patch(api, user["id"], {"identity": None}).json()["identity"] is None
    assert api.get(f"/v1/users/{user['id']}").json()["identity"] is None


def test_patch_to_unknown_identity_is_422(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {"identity": MISSING_ID})
    assert_problem(response, 422, "identity_not_found", field="identity")


def test_patch_to_another_tenants_identity_is_422(api: httpx.Client, other: httpx.Client) -> None:
    user = make_user(api)
    foreign = make_person(other)
    response = patch(api, user["id"], {"identity": foreign["id"]})
    assert_problem(response, 422, "identity_not_found", field="identity")


def test_patch_moves_updated_at_but_not_created_at(api: httpx.Client) -> None:
    user = make_user(api)
    updated = patch(api, user["id"], {"active": False}).json()
    assert updated["created_at"] == user["created_at"]
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
        user["updated_at"]
    )


def test_empty_patch_returns_the_user_unchanged(api: httpx.Client) -> None:
    user = make_user(api)
    response = patch(api, user["id"], {})
    assert response.status_code == 200, response.text
    assert response.json() == user


def test_patch_missing_user_is_404(scratch: httpx.Client) -> None:
    assert_problem(patch(scratch, MISSING_ID, {"active": False}), 404, "user_not_found")


def test_patch_another_tenants_user_is_404_and_changes_nothing(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_user(other)
    assert_problem(patch(api, foreign["id"], {"username": "hijack"}), 404, "user_not_found")
    assert other.get(f"/v1/users/{foreign['id']}").json() == foreign


# --- delete ---------------------------------------------------------------------------------


def test_delete_is_204_then_get_is_404(api: httpx.Client) -> None:
    user = make_user(api)
    response = api.delete(f"/v1/users/{user['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(api.get(f"/v1/users/{user['id']}"), 404, "user_not_found")


def test_deleted_user_leaves_the_list(api: httpx.Client) -> None:
    keep, gone = make_user(api), make_user(api)
    api.delete(f"/v1/users/{gone['id']}")
    assert [u["id"] for u in api.get("/v1/users").json()["items"]] == [keep["id"]]


def test_delete_twice_is_404(api: httpx.Client) -> None:
    user = make_user(api)
    api.delete(f"/v1/users/{user['id']}")
    assert_problem(api.delete(f"/v1/users/{user['id']}"), 404, "user_not_found")


def test_patch_deleted_user_is_404(api: httpx.Client) -> None:
    user = make_user(api)
    api.delete(f"/v1/users/{user['id']}")
    assert_problem(patch(api, user["id"], {"active": False}), 404, "user_not_found")


def test_deleted_username_can_be_reused(api: httpx.Client) -> None:
    user = make_user(api, username="recycled")
    api.delete(f"/v1/users/{user['id']}")
    assert create(api, {"username": "recycled"}).status_code == 201


def test_delete_another_tenants_user_is_404_and_keeps_it(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_user(other)
    assert_problem(api.delete(f"/v1/users/{foreign['id']}"), 404, "user_not_found")
    assert other.get(f"/v1/users/{foreign['id']}").json() == foreign


@pytest.mark.parametrize("user_id", [MISSING_ID, "nope"])
def test_delete_missing_user_is_404(scratch: httpx.Client, user_id: str) -> None:
    assert_problem(scratch.delete(f"/v1/users/{user_id}"), 404, "user_not_found")


# --- idempotency ----------------------------------------------------------------------------


def test_repeated_post_with_idempotency_key_replays_the_first_answer(api: httpx.Client) -> None:
    body = {"username": "once", "channel": {"sms": "+385 98 123 456"}}
    headers = {"idempotency-key": "create-once"}
    first = create(api, body, headers=headers)
    second = create(api, body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert [u["id"] for u in api.get("/v1/users").json()["items"]] == [first.json()["id"]]


def test_replay_returns_the_original_answer_even_after_a_change(api: httpx.Client) -> None:
    headers = {"idempotency-key": "k-1"}
    first = create(api, {"username": "original"}, headers=headers).json()
    patch(api, first["id"], {"username": "changed"})
    replay = create(api, {"username": "original"}, headers=headers)
    assert replay.status_code == 201
    assert replay.json() == first


def test_same_key_with_a_different_body_is_422(api: httpx.Client) -> None:
    headers = {"idempotency-key": "k-2"}
    create(api, {"username": "one"}, headers=headers)
    response = create(api, {"username": "two"}, headers=headers)
    assert_problem(response, 422, "idempotency_key_reused")
    assert [u["username"] for u in api.get("/v1/users").json()["items"]] == ["one"]


def test_different_keys_create_different_users(api: httpx.Client) -> None:
    a = create(api, {"username": "a"}, headers={"idempotency-key": "ka"})
    b = create(api, {"username": "b"}, headers={"idempotency-key": "kb"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_idempotency_key_longer_than_255_is_422(api: httpx.Client) -> None:
    response = create(api, {"username": "ana"}, headers={"idempotency-key": "k" * 256})
    assert_problem(response, 422, "invalid_idempotency_key")
    assert api.get("/v1/users").json()["items"] == []


def test_idempotency_key_of_255_characters_is_accepted(api: httpx.Client) -> None:
    response = create(api, {"username": "ana"}, headers={"idempotency-key": "k" * 255})
    assert response.status_code == 201, response.text


def test_idempotency_keys_are_scoped_to_the_account(api: httpx.Client, other: httpx.Client) -> None:
    body = {"username": "same-body"}
    headers = {"idempotency-key": "shared-key"}
    mine = create(api, body, headers=headers)
    theirs = create(other, body, headers=headers)
    assert theirs.status_code == 201, theirs.text
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    assert [u["id"] for u in other.get("/v1/users").json()["items"]] == [theirs.json()["id"]]


def test_repeated_patch_with_idempotency_key_replays(api: httpx.Client) -> None:
    user = make_user(api)
    headers = {"idempotency-key": "rename-1"}
    first = patch(api, user["id"], {"username": "renamed"}, headers=headers)
    second = patch(api, user["id"], {"username": "renamed"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()


def test_patch_idempotency_keys_are_scoped_to_the_path(api: httpx.Client) -> None:
    one, two = make_user(api), make_user(api)
    headers = {"idempotency-key": "deactivate"}
    patch(api, one["id"], {"active": False}, headers=headers)
    response = patch(api, two["id"], {"active": False}, headers=headers)
    assert response.status_code == 200, response.text
    assert "idempotent-replayed" not in response.headers
    assert response.json()["id"] == two["id"]
    assert response.json()["active"] is False


# --- authentication -------------------------------------------------------------------------


def test_missing_api_key_is_401(server: Server) -> None:
    with server.client() as anonymous:
        assert_problem(anonymous.get("/v1/users"), 401, "missing_api_key")


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "wrong-key"}, {"authorization": "Bearer wrong-key"}, {"authorization": "x"}],
)
def test_unknown_api_key_is_401(server: Server, headers: dict[str, str]) -> None:
    with server.client() as client:
        assert_problem(client.get("/v1/users", headers=headers), 401, "invalid_api_key")


def test_unauthenticated_write_creates_nothing(server: Server, api: httpx.Client) -> None:
    with server.client("wrong-key") as client:
        assert_problem(create(client, {"username": "ghost"}), 401, "invalid_api_key")
    assert api.get("/v1/users").json()["items"] == []


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", ""])
def test_authorization_header_is_accepted(server: Server, tenant: Tenant, scheme: str) -> None:
    with server.client() as client:
        response = client.get("/v1/users", headers={"authorization": f"{scheme}{tenant.api_key}"})
    assert response.status_code == 200, response.text


def test_authorization_header_sees_the_same_tenant(
    server: Server, tenant: Tenant, api: httpx.Client
) -> None:
    user = make_user(api)
    headers = {"authorization": f"Bearer {tenant.api_key}"}
    with server.client() as client:
        assert client.get(f"/v1/users/{user['id']}", headers=headers).json() == user


def test_revoked_key_is_rejected_within_seconds(
    server: Server, tenant: Tenant, api: httpx.Client
) -> None:
    assert api.get("/v1/users").status_code == 200
    server.cli("keys", "revoke", tenant.key_id)
    deadline = time.monotonic() + 3
    response = api.get("/v1/users")
    while response.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        response = api.get("/v1/users")
    assert_problem(response, 401, "invalid_api_key")


def test_new_key_works_for_the_same_account(
    server: Server, tenant: Tenant, api: httpx.Client
) -> None:
    user = make_user(api)
    created = json.loads(server.cli("keys", "create", "--account", tenant.account_id, "--json"))
    with server.client(created["api_key"]) as client:
        response = client.get("/v1/users")
    assert response.status_code == 200, response.text
    assert [u["id"] for u in response.json()["items"]] == [user["id"]]
