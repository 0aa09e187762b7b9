"""Provider credentials at rest: encrypted with a key derived from PIGEON_SECRET_KEY."""

from __future__ import annotations

import base64

import structlog
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pigeon.config import Settings
from pigeon.errors import PigeonError

log = structlog.get_logger("pigeon.crypto")
PREFIX = "fernet:v1:"
# What demo mode encrypted with before it generated a secret of its own (pigeon.serversecret):
# public, so it is only ever used to re-encrypt such credentials with the server's secret.
DEMO_SECRET = "pigeon-demo-mode-insecure-secret"  # noqa: S105


class SecretKeyMissing(PigeonError):
    status = 503
    code = "secret_key_not_configured"
    title = "Service unavailable"


def _fernet_for(secret: str) -> Fernet:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pigeon provider credentials v1"
    ).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _fernet(settings: Settings) -> Fernet:
    # Demo mode's generated secret is in settings.secret_key too (serversecret.with_server_secret).
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        raise SecretKeyMissing(
            "this server has no PIGEON_SECRET_KEY, so it refuses to store provider credentials; "
            "the operator must set one"
        )
    return _fernet_for(settings.secret_key.get_secret_value())


def encrypt_with(clear: str, secret: str) -> str:
    """The stored form of a provider credential, encrypted under `secret`."""
    return PREFIX + _fernet_for(secret).encrypt(clear.encode()).decode()


def try_decrypt_with(stored: str, secret: str) -> str | None:
    """The credential in clear if `secret` is the one it was encrypted with, else None."""
    if not stored.startswith(PREFIX):
        return None
    try:
        return _fernet_for(secret).decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        return None


def encrypt_secret(clear: str, settings: Settings) -> str:
    """The stored form of a provider credential."""
    return PREFIX + _fernet(settings).encrypt(clear.encode()).decode()


def decrypt_secret(stored: str, settings: Settings) -> str:
    """A stored provider credential in clear, for the provider call only."""
    if not stored.startswith(PREFIX):
        raise SecretKeyMissing("a stored provider credential is not encrypted; store it again")
    try:
        return _fernet(settings).decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SecretKeyMissing(
            "a stored provider credential cannot be decrypted with this PIGEON_SECRET_KEY"
        ) from None
