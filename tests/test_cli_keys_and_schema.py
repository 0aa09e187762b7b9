"""`pigeon keys list`, and CLI commands on a database that was never migrated."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PIGEON, ROOT, Server, server_env
from tests.databases import Databases
from tests.factories import create_tenant_with_cli


def test_keys_list_shows_ids_hints_and_revocations_never_keys(server: Server) -> None:
    tenant = create_tenant_with_cli(server, "keys-list")
    second = json.loads(server.cli("keys", "create", "--account", tenant.account_id, "--json"))
    server.cli("keys", "revoke", tenant.key_id)

    listed = json.loads(server.cli("keys", "list", "--account", tenant.account_id, "--json"))
    text = server.cli("keys", "list", "--account", tenant.account_id)
    everyone = json.loads(server.cli("keys", "list", "--json"))

    assert [k["key_id"] for k in listed] == [tenant.key_id, second["key_id"]]
    first, other = listed
    assert first["account_id"] == tenant.account_id
    assert first["hint"] == "****" + tenant.api_key[-4:]
    assert first["revoked_at"] is not None
    assert other["revoked_at"] is None
    assert first["created_at"] <= other["created_at"]
    for output in (json.dumps(listed), text, json.dumps(everyone)):
        assert tenant.api_key not in output
        assert second["api_key"] not in output
    assert tenant.key_id in text
    assert "revoked" in text
    assert "active" in text
    assert {tenant.key_id, second["key_id"], "key_demo"} <= {k["key_id"] for k in everyone}


def test_keys_list_of_an_unknown_account_is_an_error(server: Server) -> None:
    result = subprocess.run(
        [*PIGEON, "keys", "list", "--account", "000000000000000000000000"],
        env=server.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "account 000000000000000000000000 not found" in result.stderr


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIGEON, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "command", [["webhooks"], ["keys", "list"], ["accounts", "list"], ["demo"]]
)
def test_a_database_without_migrations_says_to_upgrade(
    tmp_path: Path, databases: Databases, command: list[str]
) -> None:
    env = server_env(tmp_path)  # a new, empty database on the suite's engine
    if databases.engine == "sqlite":
        (tmp_path / "pigeon.db").touch()  # an empty file is an empty SQLite database
    result = _run(env, *command)

    assert result.returncode == 1, result
    assert "the database has no schema yet" in result.stderr
    assert "run `pigeon db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_sqlite_file_says_to_upgrade_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    env = server_env(tmp_path, PIGEON_DATABASE_URL=f"sqlite:///{path}")
    result = _run(env, "webhooks")

    assert result.returncode == 1, result
    assert f"there is no database at {path}: run `pigeon db upgrade` first" in result.stderr
    assert not path.exists()
    assert _run(env, "db", "upgrade").returncode == 0
    assert _run(env, "webhooks").returncode == 0


def test_the_schema_check_adds_no_log_lines_to_a_command(server: Server) -> None:
    # The check reads the migration head through Alembic, which logs at INFO by itself.
    result = _run(server.env, "keys", "list")

    assert result.returncode == 0, result
    assert "alembic" not in result.stderr, result.stderr
    assert "key_demo" in result.stdout
