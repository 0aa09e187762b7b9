"""List cursors are signed: only the cursors the API issued return a page, on every list,
in every API process of a database and after a restart."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATABASES, Server, make_server
from tests.factories import create_tenant, make_person, make_user
from tests.fakes.receiver import Receiver

DELIVERIES = "/v1/webhook-endpoints/{endpoint}/deliveries"
LISTS = [
    "/v1/users",
    "/v1/identities",
    "/v1/messages",
    "/v1/events",
    "/v1/webhook-endpoints",
    DELIVERIES,
]


def _fill(client: httpx.Client, receiver: Receiver) -> dict[str, str]:
    """Three rows or more in every list; each list's path (an endpoint's deliveries named)."""
    endpoints = [
        client.post("/v1/webhook-endpoints", json={"url": receiver.url}).json()["id"]
        for _ in range(3)
    ]
    for _ in range(3):
        user = make_user(client)
        make_person(client)
        sent = client.post(f"/v1/users/{user['id']}/message/sms", json={"content": {"text": "x"}})
        assert sent.status_code == 200, sent.text
    paths = {path: path.format(endpoint=endpoints[0]) for path in LISTS}
    deadline = time.monotonic() + 30
    while len(client.get(paths[DELIVERIES]).json()["items"]) < 3:
        assert time.monotonic() < deadline, "the events were not delivered"
        time.sleep(0.1)
    return paths


def _cursor(client: httpx.Client, path: str) -> str:
    page = client.get(path, params={"limit": 1})
    assert page.status_code == 200, page.text
    cursor: str = page.json()["next_cursor"]
    assert cursor
    return cursor


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = make_server(tmp_path_factory.mktemp("cursors"))
    server.start()
    yield server
    server.stop()


def _assert_invalid(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_cursor"
    assert answer.json()["errors"] == [
        {"field": "cursor", "message": "not a cursor this API issued"}
    ]


@pytest.mark.parametrize("listed", LISTS)
def test_a_cursor_the_api_did_not_issue_is_422_never_a_page(
    served: Server, receiver: Receiver, listed: str
) -> None:
    tenant = create_tenant(served)
    with served.client(tenant.api_key) as client:
        paths = _fill(client, receiver)
        path = paths[listed]
        issued = _cursor(client, path)
        key = "messageId" if path == "/v1/messages" else "id"
        first_id = client.get(path, params={"limit": 1}).json()["items"][0][key]
        follows = client.get(path, params={"limit": 1, "cursor": issued})
        assert follows.status_code == 200
        assert follows.json()["items"][0][key] != first_id
        unsigned = base64.urlsafe_b64encode(first_id.encode()).decode().rstrip("=")
        edited = issued[:-1] + ("A" if issued[-1] != "A" else "B")
        foreign = [
            "é",
            "ü" * 30,
            "\u202e" + issued,
            "%ff",
            "AAAA",
            "MTIz",  # "123", unsigned: a position any numbered list might have
            unsigned,  # what the API issued before cursors were signed
            edited,
            issued[:-2],
            issued + "A",
            issued * 20,
            "x" * 5000,
        ]
        for cursor in foreign:
            _assert_invalid(client.get(path, params={"cursor": cursor}))
        # A cursor of another list, or of another tenant, is not this one's.
        for other in paths.values():
            if other != path:
                _assert_invalid(client.get(other, params={"cursor": issued}))
    other_tenant = create_tenant(served)
    with served.client(other_tenant.api_key) as client:
        theirs = _fill(client, receiver)[listed]
        _assert_invalid(client.get(theirs, params={"cursor": issued}))


def test_cursors_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    first = make_server(tmp_path)
    first.start()
    try:
        tenant = create_tenant(first)
        with first.client(tenant.api_key) as client:
            paths = _fill(client, receiver)
            cursors = {path: _cursor(client, path) for path in paths.values()}
    finally:
        first.stop()
    again = make_server(
        tmp_path,
        PIGEON_PORT=str(first.port),
        PIGEON_DATABASE_URL=first.env["PIGEON_DATABASE_URL"],
    )
    again.start()
    try:
        with again.client(tenant.api_key) as client:
            for path, cursor in cursors.items():
                answer = client.get(path, params={"limit": 1, "cursor": cursor})
                assert answer.status_code == 200, (path, answer.text)
                assert len(answer.json()["items"]) == 1
    finally:
        again.stop()


@pytest.mark.skipif(DATABASES.engine != "postgresql", reason="--workers needs PostgreSQL")
def test_cursors_work_across_api_processes(tmp_path: Path) -> None:
    server = make_server(tmp_path, "--workers", "3", "--no-worker")
    server.start()
    try:
        tenant = create_tenant(server)
        with server.client(tenant.api_key) as client:
            for _ in range(3):
                make_user(client)
        # New connections, spread over the processes by the kernel.
        for _ in range(12):
            with server.client(tenant.api_key) as client:
                cursor = _cursor(client, "/v1/users")
            with server.client(tenant.api_key) as client:
                answer = client.get("/v1/users", params={"limit": 1, "cursor": cursor})
                assert answer.status_code == 200, answer.text
    finally:
        server.stop()
