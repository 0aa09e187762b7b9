"""The server's secret: PIGEON_SECRET_KEY, or in demo mode a random one kept beside the database.

Provider credentials are encrypted with a key derived from it (extensions/crypto.py). Demo mode
used to fall back to a constant written in the source, so anyone could decrypt a demo
database's tenant keys; now a demo server on SQLite generates a secret on its first start and
keeps it in `<database file>.secret` (mode 0600), reusing it afterwards. A real
PIGEON_SECRET_KEY always wins. On PostgreSQL several processes on several machines share one
database, so they must share the secret too: demo mode there needs PIGEON_SECRET_KEY.

At start-up, `reencrypt_credentials` moves credentials stored under an older secret (the demo
constant, or the demo file's secret once a real key is set) to the current one, so existing
demo databases keep working.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import structlog
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.config import Settings
from pigeon.db.tables import infobip_extensions
from pigeon.extensions.crypto import DEMO_SECRET, encrypt_with, try_decrypt_with

log = structlog.get_logger("pigeon.secret")


class SecretKeyRequired(RuntimeError):
    """This configuration cannot start without PIGEON_SECRET_KEY."""


def secret_file(settings: Settings) -> Path | None:
    """Where a demo server on SQLite keeps its generated secret (None on other engines)."""
    database = settings.sqlite_path()
    return database.with_name(database.name + ".secret") if database is not None else None


def _has_real_key(settings: Settings) -> bool:
    return settings.secret_key is not None and bool(settings.secret_key.get_secret_value())


def _read_or_create(path: Path) -> str:
    """The secret in `path`, created (random, mode 0600) if there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one creates it and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        log.info("generated the demo secret", path=str(path))
    secret = path.read_text().strip()
    if not secret:
        raise SecretKeyRequired(f"{path} is empty: delete it to have a new one generated")
    return secret


def with_server_secret(settings: Settings) -> Settings:
    """Settings carrying the secret this server encrypts with; raises SecretKeyRequired."""
    if _has_real_key(settings) or not settings.demo:
        return settings
    path = secret_file(settings)
    if path is None:
        raise SecretKeyRequired(
            "demo mode on PostgreSQL needs PIGEON_SECRET_KEY (every process must share it), e.g. "
            "PIGEON_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return settings.model_copy(update={"secret_key": SecretStr(_read_or_create(path))})


def _older_secrets(settings: Settings) -> list[str]:
    """Secrets that stored credentials may still be encrypted with."""
    older = [DEMO_SECRET]
    path = secret_file(settings)
    if path is not None and path.exists():
        older.append(path.read_text().strip())
    current = settings.secret_key.get_secret_value() if settings.secret_key else ""
    return [s for s in older if s and s != current]


async def reencrypt_credentials(engine: AsyncEngine, settings: Settings) -> int:
    """Re-encrypt credentials stored under an older secret with the current one; how many."""
    if not _has_real_key(settings):
        return 0
    assert settings.secret_key is not None
    current = settings.secret_key.get_secret_value()
    older = _older_secrets(settings)
    moved = 0
    async with engine.begin() as conn:
        query = select(infobip_extensions.c.account_id, infobip_extensions.c.api_key)
        rows = (await conn.execute(query)).all()
        for row in rows:
            if try_decrypt_with(row.api_key, current) is not None:
                continue
            for secret in older:
                clear = try_decrypt_with(row.api_key, secret)
                if clear is not None:
                    await conn.execute(
                        update(infobip_extensions)
                        .where(infobip_extensions.c.account_id == row.account_id)
                        .values(api_key=encrypt_with(clear, current))
                    )
                    moved += 1
                    break
    if moved:
        log.info("re-encrypted provider credentials with the current secret", count=moved)
    return moved


async def prepare_secrets(engine: AsyncEngine, settings: Settings) -> None:
    """At start-up: credentials and webhook tokens of earlier secrets move to the current one."""
    from pigeon.webhooks.tokens import prepare_webhook_secret

    await reencrypt_credentials(engine, settings)
    path = secret_file(settings)
    earlier = [path.read_text().strip()] if path is not None and path.exists() else []
    await prepare_webhook_secret(engine, settings, older=earlier)
