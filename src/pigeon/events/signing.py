"""Standard Webhooks 1.0 signatures, made by the reference implementation itself."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks import Webhook


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signed_headers(event_id: str, body: str, secrets: list[str], *, at: datetime) -> dict[str, str]:
    """The headers of one attempt: its id, its time, and a `v1,` signature per secret.

    Each signature is the base64 HMAC-SHA256 of `id.timestamp.body` keyed with the secret's
    decoded bytes; while two secrets sign (after a rotation), both are sent, space-separated.
    """
    timestamp = int(at.timestamp())
    moment = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            _signer(secret).sign(msg_id=event_id, timestamp=moment, data=body) for secret in secrets
        ),
        "content-type": "application/json",
    }
