"""PostgreSQL: sends go on when the server drops Pigeon's connections (a restart, a failover)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import DATABASES, Server
from tests.databases import scalar
from tests.factories import make_user

pytestmark = pytest.mark.skipif(DATABASES.engine != "postgresql", reason="PostgreSQL connections")

DROP_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_sends_after_the_server_dropped_every_connection_are_accepted_and_stored(
    server: Server, api: httpx.Client
) -> None:
    user = make_user(api)
    path = f"/v1/users/{user['id']}/message/sms"
    assert api.post(path, json={"content": {"text": "before"}}).status_code == 200
    for round_ in range(3):
        assert scalar(server.env["PIGEON_DATABASE_URL"], DROP_OTHERS) >= 1
        response = api.post(path, json={"content": {"text": f"after {round_}"}})
        assert response.status_code == 200, response.text
    listed = api.get("/v1/messages", params={"recipient": user["id"], "limit": 10}).json()
    assert len(listed["items"]) == 4
