"""Durability across restarts, the standalone worker, and the operator's CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.conftest import DEMO_KEY, count_rows, make_server, wait_for_final
from tests.factories import create_tenant_with_cli, make_user


def queue_messages(client: httpx.Client, count: int) -> list[str]:
    user = make_user(client)
    return [
        client.post(
            f"/v1/users/{user['id']}/message/sms", json={"content": {"text": f"queued {i}"}}
        ).json()["messages"][0]["messageId"]
        for i in range(count)
    ]


def test_messages_queued_before_a_restart_are_delivered_after_it(tmp_path: Path) -> None:
    api_only = make_server(tmp_path, "--no-worker")
    api_only.start()
    try:
        tenant = create_tenant_with_cli(api_only, "restart")
        with api_only.client(tenant.api_key) as client:
            ids = queue_messages(client, 25)
            time.sleep(0.3)
            pending = [client.get(f"/v1/messages/{i}").json()["status"]["name"] for i in ids]
            assert set(pending) == {"PENDING_ACCEPTED"}
    finally:
        assert api_only.stop()
    full = make_server(
        tmp_path,
        PIGEON_PORT=str(api_only.port),
        PIGEON_DATABASE_URL=api_only.env["PIGEON_DATABASE_URL"],
    )
    full.start()
    try:
        with full.client(tenant.api_key) as client:
            finals = [wait_for_final(client, i)["status"]["name"] for i in ids]
    finally:
        full.stop()
    assert finals == ["DELIVERED_TO_HANDSET"] * 25


def test_standalone_worker_dispatches_what_the_api_accepted(tmp_path: Path) -> None:
    import subprocess
    import sys

    api_only = make_server(tmp_path, "--no-worker")
    api_only.start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "pigeon", "worker"],
        env=api_only.env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker.log").open("wb"),
    )
    try:
        with api_only.client(DEMO_KEY) as client:
            ids = queue_messages(client, 10)
            # The worker process starts while the messages are accepted: on a loaded machine
            # its start-up alone takes tens of seconds, so the first final is waited for long.
            first = wait_for_final(client, ids[0], timeout=90)
            finals = {first["status"]["name"]}
            finals |= {wait_for_final(client, i)["status"]["name"] for i in ids[1:]}
        assert finals == {"DELIVERED_TO_HANDSET"}
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        api_only.stop()


def test_cli_accounts_and_keys(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        tenant = create_tenant_with_cli(server, "Acme")
        listed = json.loads(server.cli("accounts", "list", "--json"))
        assert {"account_id": tenant.account_id, "name": "Acme"} in listed
        assert tenant.account_id in server.cli("accounts", "list")
        text = server.cli("keys", "create", "--account", tenant.account_id)
        second_key = dict(line.split(": ", 1) for line in text.splitlines())["api_key"]
        with server.client(second_key) as client:
            assert client.get("/v1/users").status_code == 200
        server.cli("keys", "revoke", tenant.key_id)
        deadline = time.monotonic() + 5
        with server.client(tenant.api_key) as client:
            while client.get("/v1/users").status_code != 401:
                assert time.monotonic() < deadline, "revoked key still accepted"
                time.sleep(0.2)
        log = (tmp_path / "server.log").read_text()
        assert tenant.api_key not in log
        assert second_key not in log
    finally:
        server.stop()


def test_demo_seeding_twice_changes_nothing(tmp_path: Path) -> None:
    server = make_server(tmp_path, PIGEON_DEMO="0")
    server.cli("db", "upgrade")
    server.cli("demo")
    tables = [
        "accounts",
        "api_keys",
        "users",
        "identities",
        "infobip_extensions",
        "whatsapp_interactions",
    ]

    def snapshot() -> dict[str, int]:
        return {t: count_rows(server.env["PIGEON_DATABASE_URL"], t) for t in tables}

    first = snapshot()
    out = server.cli("demo")
    assert DEMO_KEY in out
    assert snapshot() == first
    assert first["users"] == first["identities"] == first["accounts"] == 1


def test_openapi_and_docs_are_served(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        spec = httpx.get(f"{server.base_url}/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        paths = spec["paths"]
        for path in (
            "/v1/users/{user_id}/message/sms",
            "/v1/identities/{identity_id}/person/message/email",
            "/v1/apps/message/whatsapp",
            "/v1/messages/{message_id}",
            "/v1/extensions/infobip",
        ):
            assert path in paths, path
        docs = httpx.get(f"{server.base_url}/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
    finally:
        server.stop()


def test_two_migration_runs_at_the_same_moment_both_succeed(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = make_server(tmp_path, PIGEON_DEMO="0")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pigeon", "db", "upgrade"],
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert count_rows(server.env["PIGEON_DATABASE_URL"], "alembic_version") == 1


def test_serve_refuses_several_processes_on_sqlite(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = make_server(tmp_path, PIGEON_DEMO="0")
    if not server.env["PIGEON_DATABASE_URL"].startswith("sqlite"):
        return  # PostgreSQL takes --workers N; tests/test_scale_postgres.py runs it
    result = subprocess.run(
        [sys.executable, "-m", "pigeon", "serve", "--workers", "2"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs PostgreSQL" in result.stderr


def test_a_reclaimed_message_the_provider_already_holds_is_not_sent_again(
    tmp_path: Path,
) -> None:
    import asyncio

    from sqlalchemy import select, update

    from pigeon.db.engine import create_engine
    from pigeon.db.tables import delivery_attempts, messages

    api_only = make_server(tmp_path, "--no-worker")
    api_only.start()
    try:
        with api_only.client(DEMO_KEY) as client:
            [message_id] = queue_messages(client, 1)
    finally:
        api_only.stop()
    url = api_only.env["PIGEON_DATABASE_URL"]

    async def mark_as_sent() -> None:
        # As if a worker died after the provider accepted it and its id was stored.
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(provider_message_id="provider-already-has-it")
            )
        await engine.dispose()

    async def attempts() -> list[str]:
        engine = create_engine(url)
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(delivery_attempts.c.outcome).where(
                    delivery_attempts.c.message_id == message_id
                )
            )
            outcomes = [row.outcome for row in rows]
        await engine.dispose()
        return outcomes

    asyncio.run(mark_as_sent())
    full = make_server(tmp_path, PIGEON_DATABASE_URL=url)
    full.start()
    try:
        with full.client(DEMO_KEY) as client:
            deadline = time.monotonic() + 10
            while client.get(f"/v1/messages/{message_id}").json()["status"]["id"] == 26:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            message = client.get(f"/v1/messages/{message_id}").json()
    finally:
        full.stop()
    assert message["status"]["name"] == "PENDING_ENROUTE"
    assert message["providerMessageId"] == "provider-already-has-it"
    assert asyncio.run(attempts()) == ["skipped"]
