"""Webhook tokens at rest and in logs: the database and the log never hold a usable token."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from pigeon.config import Settings
from pigeon.db.engine import create_engine
from pigeon.db.migrate import upgrade
from tests.conftest import DATABASES, DEMO_KEY, Server, make_server
from tests.databases import Databases, execute
from tests.factories import create_tenant, enable_extension

OLD_ACCOUNT = "634b56217f6a7b0be52d1111"
OLD_ACCOUNT_TOKEN = "old-account-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OLD_PLATFORM_TOKEN = "old-platform-token-BBBBBBBBBBBBBBBBBBBBBBBBBBBB"
INBOUND = {
    "results": [
        {
            "from": "38598111222",
            "to": "447860088594",
            "integrationType": "WHATSAPP",
            "receivedAt": "2026-12-01T08:00:00.000+0000",
            "messageId": "inbound-1",
            "message": {"type": "TEXT", "text": "hello"},
        }
    ]
}


def _token_of(url: str) -> str:
    match = re.search(r"/v1/webhooks/infobip/[^/]+/([^/]+)/", url)
    assert match, url
    return match.group(1)


def _database_text(url: str) -> str:
    """Every value of the tables that held tokens before, as one string."""

    async def read() -> str:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                parts = []
                for table in ("accounts", "platform_state", "webhook_token_hashes"):
                    rows = await conn.execute(text(f"SELECT * FROM {table}"))
                    parts += [repr(tuple(row)) for row in rows]
                return "\n".join(parts)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _database_files(url: str) -> bytes:
    if not url.startswith("sqlite"):
        return b""
    path = Path(url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


@pytest.fixture(scope="module")
def pigeon(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Any:
    server = make_server(tmp_path_factory.mktemp("tokens"))
    server.start()
    yield server
    server.stop()


def test_the_database_holds_no_usable_webhook_token(pigeon: Server) -> None:
    tenant = create_tenant(pigeon)
    with pigeon.client(tenant.api_key) as api:
        inbound_url = enable_extension(api)["webhooks"]["inbound"]
        platform_url = pigeon.cli("webhooks").split("inbound: ", 1)[1].strip()
        for url in (inbound_url, platform_url):
            assert httpx.post(url, json=INBOUND, timeout=30).status_code == 200, url

    url = pigeon.env["PIGEON_DATABASE_URL"]
    stored = _database_text(url)
    files = _database_files(url)
    for token in (_token_of(inbound_url), _token_of(platform_url)):
        assert token not in stored
        assert token.encode() not in files


def test_a_failing_webhook_logs_its_route_not_its_token(
    tmp_path: Path, databases: Databases
) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        with server.client(DEMO_KEY) as demo:
            inbound_url = demo.get("/v1/extensions/infobip").json()["webhooks"]["inbound"]
        # Break what the inbound webhook writes to: its request fails on the server's side.
        cascade = " CASCADE" if DATABASES.engine == "postgresql" else ""
        execute(server.env["PIGEON_DATABASE_URL"], f"DROP TABLE whatsapp_interactions{cascade}")
        response = httpx.post(inbound_url, json=INBOUND, timeout=30)
        assert response.status_code >= 500, response.text
    finally:
        server.stop()

    log = server.log_path.read_text()
    assert "/v1/webhooks/infobip/{owner}/{token}/inbound" in log
    assert _token_of(inbound_url) not in log


def _old_database(tmp_path: Path) -> str:
    """A database at migration 0006 (before 0007) holding tokens the way Pigeon stored them then."""
    url = DATABASES.new_url(tmp_path)
    upgrade(Settings(database_url=url), "0006")
    execute(
        url,
        "INSERT INTO accounts (id, name, webhook_token, created_at) VALUES "
        f"('{OLD_ACCOUNT}', 'old', '{OLD_ACCOUNT_TOKEN}', '2026-11-01 00:00:00+00:00')",
    )
    execute(
        url,
        "INSERT INTO platform_state (name, value) VALUES "
        f"('platform_webhook_token', '{OLD_PLATFORM_TOKEN}')",
    )
    return url


def test_webhook_urls_from_before_the_upgrade_still_work(
    tmp_path: Path, databases: Databases
) -> None:
    url = _old_database(tmp_path)
    server = make_server(tmp_path, PIGEON_DATABASE_URL=url)
    server.start()
    try:
        base = f"{server.base_url}/v1/webhooks/infobip"
        for owner, token in (("platform", OLD_PLATFORM_TOKEN), (OLD_ACCOUNT, OLD_ACCOUNT_TOKEN)):
            old = httpx.post(f"{base}/{owner}/{token}/inbound", json=INBOUND, timeout=30)
            assert old.status_code == 200, old.text
            wrong = httpx.post(f"{base}/{owner}/{token}x/inbound", json=INBOUND, timeout=30)
            assert wrong.status_code == 401, wrong.text
        # Another account's old token does not open this one's URL.
        crossed = httpx.post(f"{base}/platform/{OLD_ACCOUNT_TOKEN}/inbound", json=INBOUND)
        assert crossed.status_code == 401
        # And the URLs shown now work too.
        shown = server.cli("webhooks").split("inbound: ", 1)[1].strip()
        assert httpx.post(shown, json=INBOUND, timeout=30).status_code == 200
    finally:
        server.stop()

    stored = _database_text(url)
    assert OLD_ACCOUNT_TOKEN not in stored
    assert OLD_PLATFORM_TOKEN not in stored


def test_without_any_secret_the_token_comes_from_the_database_until_a_secret_is_set(
    tmp_path: Path, databases: Databases
) -> None:
    server = make_server(tmp_path, PIGEON_DEMO="0")
    server.env.pop("PIGEON_SECRET_KEY", None)
    server.start()
    assert server.stop()
    assert "reading the database allows forging reports" in server.log_path.read_text()
    before = server.cli("webhooks").split("inbound: ", 1)[1].strip()

    server.env["PIGEON_SECRET_KEY"] = "now-the-operator-set-a-secret-key"
    server.start()
    try:
        after = server.cli("webhooks").split("inbound: ", 1)[1].strip()
        assert after != before
        for url in (before, after):
            assert httpx.post(url, json=INBOUND, timeout=30).status_code == 200, url
    finally:
        server.stop()
    assert "webhook_secret" not in _database_text(server.env["PIGEON_DATABASE_URL"])
