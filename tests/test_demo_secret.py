"""Demo mode's secret: generated on first start beside the SQLite file, never a constant."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from pigeon.extensions.crypto import DEMO_SECRET, encrypt_with, try_decrypt_with
from tests.conftest import DATABASES, PIGEON, ROOT, Server, make_server, server_env
from tests.databases import Databases, execute, scalar

DEMO_ACCOUNT = "634b56217f6a7b0be52d0000"
DEMO_INFOBIP_KEY = "demo-infobip-api-key"
OLD_TENANT_KEY = "tenant-key-from-before-the-upgrade"


def _stored_key(server: Server, account_id: str = DEMO_ACCOUNT) -> str:
    return str(
        scalar(
            server.env["PIGEON_DATABASE_URL"],
            f"SELECT api_key FROM infobip_extensions WHERE account_id = '{account_id}'",
        )
    )


def _sqlite_demo(tmp_path: Path) -> Server:
    """A demo server on a SQLite file, without PIGEON_SECRET_KEY (whatever the suite's engine)."""
    server = make_server(tmp_path, PIGEON_DATABASE_URL=f"sqlite:///{tmp_path / 'pigeon.db'}")
    server.env.pop("PIGEON_SECRET_KEY", None)
    return server


def test_demo_generates_a_private_secret_beside_the_database_and_a_real_key_wins(
    tmp_path: Path, databases: Databases
) -> None:
    server = _sqlite_demo(tmp_path)
    secret_file = tmp_path / "pigeon.db.secret"
    server.start()
    assert server.stop()

    assert secret_file.exists()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    stored = _stored_key(server)
    assert try_decrypt_with(stored, secret) == DEMO_INFOBIP_KEY
    assert try_decrypt_with(stored, DEMO_SECRET) is None, "still encrypted with the constant"

    server.start()
    assert server.stop()
    assert secret_file.read_text().strip() == secret
    assert try_decrypt_with(_stored_key(server), secret) == DEMO_INFOBIP_KEY

    # Then the operator sets a real key: it wins, and the credentials move to it.
    server.env["PIGEON_SECRET_KEY"] = "the-operators-real-secret-key-42"
    server.start()
    assert server.stop()
    stored = _stored_key(server)
    assert try_decrypt_with(stored, "the-operators-real-secret-key-42") == DEMO_INFOBIP_KEY
    assert try_decrypt_with(stored, secret) is None


def test_keys_encrypted_with_the_old_constant_are_re_encrypted_at_start(
    tmp_path: Path, databases: Databases
) -> None:
    server = make_server(tmp_path)
    if DATABASES.engine == "sqlite":
        server.env.pop("PIGEON_SECRET_KEY", None)
    server.start()
    assert server.stop()
    # A database from before: the demo's key and a tenant's, encrypted with the constant.
    url = server.env["PIGEON_DATABASE_URL"]
    execute(
        url,
        f"UPDATE infobip_extensions SET api_key = '{encrypt_with(OLD_TENANT_KEY, DEMO_SECRET)}'",
    )
    secret_file = Path(url.removeprefix("sqlite:///") + ".secret")
    if secret_file.exists():
        secret_file.unlink()

    server.start()
    try:
        with server.client("AXVubzpwQDU1dzByYM==") as demo:
            assert demo.get("/v1/extensions/infobip").status_code == 200
    finally:
        assert server.stop()

    secret = server.env.get("PIGEON_SECRET_KEY") or secret_file.read_text().strip()
    stored = _stored_key(server)
    assert try_decrypt_with(stored, secret) == OLD_TENANT_KEY
    assert try_decrypt_with(stored, DEMO_SECRET) is None


def test_a_real_secret_key_means_no_secret_file(tmp_path: Path, databases: Databases) -> None:
    server = _sqlite_demo(tmp_path)
    server.env["PIGEON_SECRET_KEY"] = "the-operators-real-secret-key-42"
    server.start()
    assert server.stop()

    assert not (tmp_path / "pigeon.db.secret").exists()


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["demo"]])
def test_demo_on_postgresql_needs_a_secret_key(tmp_path: Path, command: list[str]) -> None:
    env = server_env(tmp_path, PIGEON_DATABASE_URL="postgresql://pigeon@127.0.0.1:1/none")
    env.pop("PIGEON_SECRET_KEY", None)
    result = subprocess.run(
        [*PIGEON, *command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result
    assert "demo mode on PostgreSQL needs PIGEON_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
