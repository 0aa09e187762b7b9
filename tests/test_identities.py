"""/v1/identities: create, read, list, update and delete Identities (persons, companies)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.factories import create_tenant, make_person, make_user, unique_phone

PROBLEM_KEYS = {"type", "title", "status", "code", "detail", "instance"}
MISSING_ID = "0" * 24
CONTACT = "person.contactInformation"
EMPTY_PERSON = {
    "firstName": None,
    "lastName": None,
    "contactInformation": {"phone": [], "email": []},
}


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


def create(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return client.post("/v1/identities", json=body, **kwargs)


def patch(
    client: httpx.Client, identity_id: str, body: dict[str, Any], **kw: Any
) -> httpx.Response:
    return client.patch(f"/v1/identities/{identity_id}", json=body, **kw)


def person_body(**person: Any) -> dict[str, Any]:
    return {"type": "person", "person": person}


def email() -> str:
    return f"{uuid.uuid4().hex[:8]}@example.com"


def list_all(client: httpx.Client, limit: int) -> list[dict[str, Any]]:
    """Every identity of the tenant, following next_cursor page by page."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        response = client.get("/v1/identities", params=params)
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


def test_create_person_returns_201_and_the_full_identity(api: httpx.Client) -> None:
    phone, address = unique_phone(), email()
    body = {
        "type": "person",
        "country": "HR",
        "currency": "EUR",
        "data": {"segment": "vip", "scores": [1, 2]},
        "person": {
            "firstName": "Ivo",
            "lastName": "Ivić",
            "contactInformation": {"phone": [{"number": phone}], "email": [{"address": address}]},
        },
    }
    response = create(api, body)
    assert response.status_code == 201, response.text
    identity = response.json()
    assert set(identity) == {
        "id",
        "type",
        "country",
        "currency",
        "data",
        "person",
        "created_at",
        "updated_at",
        "sync",
    }
    assert identity["sync"] is None  # no Infobip extension: nothing to sync
    assert re.fullmatch(r"[0-9a-f]{24}", identity["id"])
    assert {k: identity[k] for k in body} == body
    assert datetime.fromisoformat(identity["created_at"]).tzinfo is not None
    assert identity["updated_at"] == identity["created_at"]


def test_empty_body_creates_a_neutral_identity(api: httpx.Client) -> None:
    response = create(api, {})
    assert response.status_code == 201, response.text
    identity = response.json()
    assert identity["type"] == "neutral"
    assert identity["country"] is None
    assert identity["currency"] is None
    assert identity["data"] == {}
    assert identity["person"] is None


def test_company_identity_has_no_person(api: httpx.Client) -> None:
    identity = create(api, {"type": "company", "country": "DE", "data": {"vat": "DE1"}}).json()
    assert identity["type"] == "company"
    assert identity["person"] is None
    assert identity["data"] == {"vat": "DE1"}


def test_person_type_without_person_gets_an_empty_person(api: httpx.Client) -> None:
    identity = create(api, {"type": "person"}).json()
    assert identity["person"] == EMPTY_PERSON


def test_person_with_only_names_gets_empty_contact_lists(api: httpx.Client) -> None:
    identity = create(api, person_body(firstName="Ana")).json()
    assert identity["person"] == {**EMPTY_PERSON, "firstName": "Ana"}


def test_country_and_currency_are_uppercased(api: httpx.Client) -> None:
    identity = create(api, {"country": "hr", "currency": "eur"}).json()
    assert identity["country"] == "HR"
    assert identity["currency"] == "EUR"
    fetched = api.get(f"/v1/identities/{identity['id']}").json()
    assert (fetched["country"], fetched["currency"]) == ("HR", "EUR")


@pytest.mark.parametrize("country", ["HRV", "H", "1A", "", "H-", 12])
def test_bad_country_is_422(scratch: httpx.Client, country: Any) -> None:
    response = create(scratch, {"country": country})
    assert_problem(response, 422, "validation_error", field="country")


@pytest.mark.parametrize("currency", ["EU", "EURO", "E1R", "", 978])
def test_bad_currency_is_422(scratch: httpx.Client, currency: Any) -> None:
    response = create(scratch, {"currency": currency})
    assert_problem(response, 422, "validation_error", field="currency")


@pytest.mark.parametrize("identity_type", ["robot", "PERSON", "", None])
def test_unknown_type_is_422(scratch: httpx.Client, identity_type: Any) -> None:
    response = create(scratch, {"type": identity_type})
    assert_problem(response, 422, "validation_error", field="type")


@pytest.mark.parametrize("identity_type", ["neutral", "company"])
def test_person_on_a_non_person_type_is_422(scratch: httpx.Client, identity_type: str) -> None:
    response = create(scratch, {"type": identity_type, "person": {"firstName": "Ivo"}})
    assert_problem(response, 422, "validation_error", field="person")


def test_person_without_type_is_422(scratch: httpx.Client) -> None:
    response = create(scratch, {"person": {"firstName": "Ivo"}})
    assert_problem(response, 422, "validation_error", field="person")


@pytest.mark.parametrize("raw", ["+385 98 123 456", "+38598123456", "38598123456", "0038598123456"])
def test_person_phones_are_normalised_to_digits(scratch: httpx.Client, raw: str) -> None:
    body = person_body(contactInformation={"phone": [{"number": raw}]})
    response = create(scratch, body)
    assert response.status_code == 201, response.text
    assert response.json()["person"]["contactInformation"]["phone"] == [{"number": "38598123456"}]


def test_several_phones_and_emails_keep_their_order(api: httpx.Client) -> None:
    phones, emails = [unique_phone() for _ in range(3)], [email() for _ in range(2)]
    contact = {
        "phone": [{"number": f"+{p}"} for p in phones],
        "email": [{"address": a} for a in emails],
    }
    identity = create(api, person_body(contactInformation=contact)).json()
    assert identity["person"]["contactInformation"] == {
        "phone": [{"number": p} for p in phones],
        "email": [{"address": a} for a in emails],
    }


@pytest.mark.parametrize("bad", ["12345", "not a phone", "+999 1234567", ""])
def test_invalid_phone_is_422_naming_its_index(scratch: httpx.Client, bad: str) -> None:
    contact = {"phone": [{"number": unique_phone()}, {"number": bad}]}
    response = create(scratch, person_body(contactInformation=contact))
    assert_problem(
        response, 422, "invalid_phone", field="person.contactInformation.phone[1].number"
    )


@pytest.mark.parametrize("bad", ["not-an-email", "ana@", "@example.com", ""])
def test_invalid_email_is_422_naming_its_index(scratch: httpx.Client, bad: str) -> None:
    contact = {"email": [{"address": bad}, {"address": email()}]}
    response = create(scratch, person_body(contactInformation=contact))
    assert_problem(
        response, 422, "invalid_email", field="person.contactInformation.email[0].address"
    )


def test_invalid_contact_creates_nothing(api: httpx.Client) -> None:
    create(api, person_body(contactInformation={"phone": [{"number": "12345"}]}))
    assert api.get("/v1/identities").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"nickname": "x"}, "nickname"),
        (person_body(middleName="x"), "person.middleName"),
        (person_body(contactInformation={"fax": []}), "person.contactInformation.fax"),
        (
            person_body(contactInformation={"phone": [{"num": "38598123456"}]}),
            "person.contactInformation.phone[0].num",
        ),
    ],
)
def test_unknown_field_is_422(scratch: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_problem(create(scratch, body), 422, "validation_error", field=field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": ["not", "an", "object"]}, "data"),
        (person_body(firstName=42), "person.firstName"),
        (person_body(firstName="x" * 201), "person.firstName"),
        (person_body(contactInformation={"phone": "38598123456"}), f"{CONTACT}.phone"),
        (person_body(contactInformation={"email": [{}]}), f"{CONTACT}.email[0].address"),
    ],
)
def test_wrong_type_is_422(scratch: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_problem(create(scratch, body), 422, "validation_error", field=field)


def test_malformed_json_is_400(scratch: httpx.Client) -> None:
    response = scratch.post(
        "/v1/identities", content=b"{type: person}", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_json")


# --- read -----------------------------------------------------------------------------------


def test_get_returns_the_created_identity(api: httpx.Client) -> None:
    identity = make_person(api)
    response = api.get(f"/v1/identities/{identity['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == identity


@pytest.mark.parametrize("identity_id", [MISSING_ID, "nope", "ABCDEF0123456789ABCDEF01"])
def test_get_missing_identity_is_404(scratch: httpx.Client, identity_id: str) -> None:
    assert_problem(scratch.get(f"/v1/identities/{identity_id}"), 404, "identity_not_found")


def test_another_tenants_identity_looks_exactly_like_a_missing_one(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_person(other)
    hidden = assert_problem(api.get(f"/v1/identities/{foreign['id']}"), 404, "identity_not_found")
    missing = assert_problem(api.get(f"/v1/identities/{MISSING_ID}"), 404, "identity_not_found")
    assert set(hidden) == set(missing)
    assert hidden["title"] == missing["title"]
    assert hidden["detail"] == missing["detail"].replace(MISSING_ID, foreign["id"])


# --- list -----------------------------------------------------------------------------------


def test_list_of_a_new_tenant_is_empty(api: httpx.Client) -> None:
    response = api.get("/v1/identities")
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


def test_list_is_oldest_first(api: httpx.Client) -> None:
    created = [create(api, {"data": {"n": n}}).json()["id"] for n in range(6)]
    page = api.get("/v1/identities").json()
    assert [i["id"] for i in page["items"]] == created
    assert page["next_cursor"] is None


def test_list_items_equal_single_gets(api: httpx.Client) -> None:
    identity = make_person(api)
    assert api.get("/v1/identities").json()["items"] == [identity]


def test_list_shows_only_the_tenants_own_identities(api: httpx.Client, other: httpx.Client) -> None:
    mine = make_person(api)
    make_person(other)
    assert [i["id"] for i in api.get("/v1/identities").json()["items"]] == [mine["id"]]


def test_paging_returns_every_identity_exactly_once(api: httpx.Client) -> None:
    created = {create(api, {}).json()["id"] for _ in range(7)}
    seen = [i["id"] for i in list_all(api, limit=2)]
    assert len(seen) == len(created)
    assert set(seen) == created


def test_pages_respect_limit_and_last_page_has_no_cursor(api: httpx.Client) -> None:
    for _ in range(3):
        create(api, {})
    first = api.get("/v1/identities", params={"limit": 2}).json()
    assert len(first["items"]) == 2
    assert isinstance(first["next_cursor"], str)
    second = api.get("/v1/identities", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(second["items"]) == 1
    assert second["next_cursor"] is None


def test_default_page_size_is_20(api: httpx.Client) -> None:
    for _ in range(21):
        create(api, {})
    page = api.get("/v1/identities").json()
    assert len(page["items"]) == 20
    assert page["next_cursor"] is not None


@pytest.mark.parametrize("limit", ["0", "101", "-5", "many"])
def test_limit_out_of_range_is_a_client_error(scratch: httpx.Client, limit: str) -> None:
    response = scratch.get("/v1/identities", params={"limit": limit})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("cursor", ["garbage", "not-a-cursor!!", "zzzz"])
def test_garbage_cursor_is_422(scratch: httpx.Client, cursor: str) -> None:
    response = scratch.get("/v1/identities", params={"cursor": cursor})
    assert_problem(response, 422, "invalid_cursor")


# --- update ---------------------------------------------------------------------------------


def test_patch_last_name_keeps_first_name_and_contacts(api: httpx.Client) -> None:
    identity = make_person(api)
    response = patch(api, identity["id"], {"person": {"lastName": "Horvat"}})
    assert response.status_code == 200, response.text
    assert response.json()["person"] == {**identity["person"], "lastName": "Horvat"}


def test_patch_name_to_null_clears_only_that_name(api: httpx.Client) -> None:
    identity = make_person(api)
    person = patch(api, identity["id"], {"person": {"firstName": None}}).json()["person"]
    assert person == {**identity["person"], "firstName": None}


def test_patch_contact_information_replaces_it_whole(api: httpx.Client) -> None:
    identity = make_person(api)
    phone = unique_phone()
    response = patch(
        api, identity["id"], {"person": {"contactInformation": {"phone": [{"number": phone}]}}}
    )
    person = response.json()["person"]
    assert person["contactInformation"] == {"phone": [{"number": phone}], "email": []}
    assert person["firstName"] == identity["person"]["firstName"]
    assert person["lastName"] == identity["person"]["lastName"]


def test_patch_contact_phones_are_normalised(api: httpx.Client) -> None:
    identity = make_person(api)
    contact = {"phone": [{"number": "00385 98 123 456"}]}
    person = patch(api, identity["id"], {"person": {"contactInformation": contact}}).json()
    assert person["person"]["contactInformation"]["phone"] == [{"number": "38598123456"}]


def test_patch_invalid_contact_is_422_and_changes_nothing(api: httpx.Client) -> None:
    identity = make_person(api)
    contact = {"phone": [{"number": unique_phone()}], "email": [{"address": "x"}, {"address": ""}]}
    body = {"data": {"changed": True}, "person": {"contactInformation": contact}}
    response = patch(api, identity["id"], body)
    assert_problem(
        response, 422, "invalid_email", field="person.contactInformation.email[0].address"
    )
    assert api.get(f"/v1/identities/{identity['id']}").json() == identity


def test_patch_invalid_phone_names_its_index(api: httpx.Client) -> None:
    identity = make_person(api)
    contact = {"phone": [{"number": unique_phone()}, {"number": "12"}]}
    response = patch(api, identity["id"], {"person": {"contactInformation": contact}})
    assert_problem(
        response, 422, "invalid_phone", field="person.contactInformation.phone[1].number"
    )


def test_patch_unknown_person_field_is_422(api: httpx.Client) -> None:
    identity = make_person(api)
    response = patch(api, identity["id"], {"person": {"middleName": "x"}})
    assert_problem(response, 422, "validation_error", field="person.middleName")


def test_patch_without_person_keeps_person(api: httpx.Client) -> None:
    identity = make_person(api)
    updated = patch(api, identity["id"], {"data": {"k": "v"}}).json()
    assert updated["person"] == identity["person"]
    assert updated["data"] == {"k": "v"}


def test_patch_data_replaces_the_whole_object(api: httpx.Client) -> None:
    identity = create(api, {"data": {"a": 1, "b": 2}}).json()
    assert patch(api, identity["id"], {"data": {"c": 3}}).json()["data"] == {"c": 3}


def test_patch_country_and_currency_are_uppercased(api: httpx.Client) -> None:
    identity = make_person(api)
    updated = patch(api, identity["id"], {"country": "si", "currency": "usd"}).json()
    assert (updated["country"], updated["currency"]) == ("SI", "USD")


def test_patch_country_null_clears_it(api: httpx.Client) -> None:
    identity = make_person(api)
    updated = patch(api, identity["id"], {"country": None}).json()
    assert updated["country"] is None
    assert updated["currency"] == identity["currency"]


@pytest.mark.parametrize(("field", "value"), [("country", "HRV"), ("currency", "EU")])
def test_patch_bad_country_or_currency_is_422(api: httpx.Client, field: str, value: str) -> None:
    identity = make_person(api)
    assert_problem(patch(api, identity["id"], {field: value}), 422, "validation_error", field)
    assert api.get(f"/v1/identities/{identity['id']}").json() == identity


def test_patch_person_on_a_company_is_422(api: httpx.Client) -> None:
    identity = create(api, {"type": "company"}).json()
    response = patch(api, identity["id"], {"person": {"firstName": "Ivo"}})
    assert_problem(response, 422, "validation_error", field="person")
    assert api.get(f"/v1/identities/{identity['id']}").json() == identity


def test_patch_type_to_person_together_with_person(api: httpx.Client) -> None:
    identity = create(api, {}).json()
    updated = patch(api, identity["id"], {"type": "person", "person": {"lastName": "Kovač"}})
    assert updated.status_code == 200, updated.text
    assert updated.json()["type"] == "person"
    assert updated.json()["person"] == {**EMPTY_PERSON, "lastName": "Kovač"}


def test_patch_unknown_type_is_422(api: httpx.Client) -> None:
    identity = create(api, {}).json()
    assert_problem(patch(api, identity["id"], {"type": "robot"}), 422, "validation_error", "type")


def test_patch_unknown_field_is_422(api: httpx.Client) -> None:
    identity = create(api, {}).json()
    assert_problem(patch(api, identity["id"], {"nick": "x"}), 422, "validation_error", "nick")


def test_patch_moves_updated_at_but_not_created_at(api: httpx.Client) -> None:
    identity = make_person(api)
    updated = patch(api, identity["id"], {"data": {}}).json()
    assert updated["created_at"] == identity["created_at"]
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
        identity["updated_at"]
    )


def test_empty_patch_returns_the_identity_unchanged(api: httpx.Client) -> None:
    identity = make_person(api)
    response = patch(api, identity["id"], {})
    assert response.status_code == 200, response.text
    assert response.json() == identity


def test_patch_missing_identity_is_404(scratch: httpx.Client) -> None:
    assert_problem(patch(scratch, MISSING_ID, {"data": {}}), 404, "identity_not_found")


def test_patch_another_tenants_identity_is_404_and_changes_nothing(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_person(other)
    response = patch(api, foreign["id"], {"person": {"firstName": "Mallory"}})
    assert_problem(response, 404, "identity_not_found")
    assert other.get(f"/v1/identities/{foreign['id']}").json() == foreign


# --- delete ---------------------------------------------------------------------------------


def test_delete_is_204_then_get_is_404(api: httpx.Client) -> None:
    identity = make_person(api)
    response = api.delete(f"/v1/identities/{identity['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(api.get(f"/v1/identities/{identity['id']}"), 404, "identity_not_found")


def test_deleted_identity_leaves_the_list(api: httpx.Client) -> None:
    keep, gone = make_person(api), make_person(api)
    api.delete(f"/v1/identities/{gone['id']}")
    assert [i["id"] for i in api.get("/v1/identities").json()["items"]] == [keep["id"]]


def test_delete_twice_is_404(api: httpx.Client) -> None:
    identity = make_person(api)
    api.delete(f"/v1/identities/{identity['id']}")
    assert_problem(api.delete(f"/v1/identities/{identity['id']}"), 404, "identity_not_found")


@pytest.mark.parametrize("identity_id", [MISSING_ID, "nope"])
def test_delete_missing_identity_is_404(scratch: httpx.Client, identity_id: str) -> None:
    assert_problem(scratch.delete(f"/v1/identities/{identity_id}"), 404, "identity_not_found")


def test_delete_another_tenants_identity_is_404_and_keeps_it(
    api: httpx.Client, other: httpx.Client
) -> None:
    foreign = make_person(other)
    assert_problem(api.delete(f"/v1/identities/{foreign['id']}"), 404, "identity_not_found")
    assert other.get(f"/v1/identities/{foreign['id']}").json() == foreign


def test_deleting_a_linked_identity_unlinks_its_users(api: httpx.Client) -> None:
    identity = make_person(api)
    linked = make_user(api, identity=identity["id"])
    response = api.delete(f"/v1/identities/{identity['id']}")
    assert response.status_code == 204, response.text
    user = api.get(f"/v1/users/{linked['id']}").json()
    assert user["identity"] is None
    assert {k: v for k, v in user.items() if k not in ("identity", "updated_at")} == {
        k: v for k, v in linked.items() if k not in ("identity", "updated_at")
    }


def test_deleted_identity_cannot_be_linked_again(api: httpx.Client) -> None:
    identity = make_person(api)
    user = make_user(api)
    api.delete(f"/v1/identities/{identity['id']}")
    response = api.patch(f"/v1/users/{user['id']}", json={"identity": identity["id"]})
    assert_problem(response, 422, "identity_not_found", field="identity")


# --- idempotency ----------------------------------------------------------------------------


def test_repeated_post_with_idempotency_key_replays_the_first_answer(api: httpx.Client) -> None:
    body = person_body(firstName="Ivo", contactInformation={"phone": [{"number": "+385981234567"}]})
    headers = {"idempotency-key": "create-person"}
    first = create(api, body, headers=headers)
    second = create(api, body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert [i["id"] for i in api.get("/v1/identities").json()["items"]] == [first.json()["id"]]


def test_same_key_with_a_different_body_is_422(api: httpx.Client) -> None:
    headers = {"idempotency-key": "k"}
    create(api, {"type": "company"}, headers=headers)
    assert_problem(create(api, {"type": "neutral"}, headers=headers), 422, "idempotency_key_reused")
    assert [i["type"] for i in api.get("/v1/identities").json()["items"]] == ["company"]


def test_idempotency_key_longer_than_255_is_422(api: httpx.Client) -> None:
    response = create(api, {}, headers={"idempotency-key": "x" * 256})
    assert_problem(response, 422, "invalid_idempotency_key")
    assert api.get("/v1/identities").json()["items"] == []


def test_idempotency_keys_are_scoped_to_the_account(api: httpx.Client, other: httpx.Client) -> None:
    headers = {"idempotency-key": "shared"}
    mine = create(api, {"type": "company"}, headers=headers)
    theirs = create(other, {"type": "company"}, headers=headers)
    assert theirs.status_code == 201, theirs.text
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]


def test_same_key_on_users_and_identities_is_independent(api: httpx.Client) -> None:
    headers = {"idempotency-key": "one-key"}
    identity = create(api, {}, headers=headers)
    user = api.post("/v1/users", json={"username": "u"}, headers=headers)
    assert identity.status_code == user.status_code == 201
    assert "idempotent-replayed" not in user.headers


def test_repeated_patch_with_idempotency_key_replays(api: httpx.Client) -> None:
    identity = make_person(api)
    headers = {"idempotency-key": "rename"}
    first = patch(api, identity["id"], {"person": {"lastName": "Babić"}}, headers=headers)
    second = patch(api, identity["id"], {"person": {"lastName": "Babić"}}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()


# --- authentication -------------------------------------------------------------------------


def test_identities_require_an_api_key(server: Server) -> None:
    with server.client() as anonymous:
        assert_problem(anonymous.get("/v1/identities"), 401, "missing_api_key")
        assert_problem(create(anonymous, {}), 401, "missing_api_key")


def test_patch_to_person_type_gives_an_empty_person(api: httpx.Client) -> None:
    identity = api.post("/v1/identities", json={}).json()
    assert identity["person"] is None
    patched = api.patch(f"/v1/identities/{identity['id']}", json={"type": "person"}).json()
    assert patched["person"] == {
        "firstName": None,
        "lastName": None,
        "contactInformation": {"phone": [], "email": []},
    }
    back = api.patch(f"/v1/identities/{identity['id']}", json={"type": "company"}).json()
    assert back["person"] is None
