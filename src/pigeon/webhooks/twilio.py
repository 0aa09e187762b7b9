"""Twilio's status callbacks: check the token and the signature, then apply the status.

Twilio signs each callback with `X-Twilio-Signature` over the URL it was given (Pigeon's
`PIGEON_PUBLIC_URL` followed by the callback's path) and the form parameters; a callback
whose signature does not match that URL, these parameters and the auth token is refused with
401 before anything is read from the database but the URL's token.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.config import Settings
from pigeon.db.tables import messages
from pigeon.errors import BadRequest, Unauthorized
from pigeon.messages import whatsapp
from pigeon.messages.reports import apply_statuses
from pigeon.providers import twilio
from pigeon.webhooks.schemas import WebhookAnswer

log = structlog.get_logger("pigeon.webhooks")
# Twilio's callback is one message's status in about 20 form parameters (under 2 KB): a
# larger one is not Twilio's, refused before its parameters are parsed or signed.
MAX_BYTES = 64 * 1024  # 413 payload_too_large past it
MAX_FIELDS = 100  # 400 malformed_callback past it


def check_signature(
    settings: Settings, url: str, params: Sequence[tuple[str, str]], given: str | None
) -> None:
    """Refuse a callback that Twilio did not sign for this URL and body."""
    token = settings.twilio_auth_token.get_secret_value()
    if not twilio.valid_signature(token, url, params, given):
        raise Unauthorized("invalid X-Twilio-Signature", code="invalid_twilio_signature")


def for_platform(owner: str) -> bool:
    """Whether a callback URL's owner can be Twilio's: it sends for the platform only."""
    return owner == whatsapp.PLATFORM


async def apply_status_callback(
    *,
    conn: AsyncConnection,
    settings: Settings,
    url: str,
    params: Sequence[tuple[str, str]],
    given_signature: str | None,
) -> WebhookAnswer:
    """Check a status callback's signature (its URL's token was checked by the route's guard)
    and move the message it names; unknown ids are logged."""
    check_signature(settings, url, params, given_signature)
    fields = dict(params)
    sid = fields.get("MessageSid") or fields.get("SmsSid")
    if not sid:
        raise BadRequest("a status callback names its MessageSid", code="malformed_callback")
    query = select(messages.c.id).where(
        messages.c.provider_message_id == sid,
        messages.c.provider == twilio.NAME,
        messages.c.route == "platform",
    )
    message_id = (await conn.execute(query)).scalar_one_or_none()
    if message_id is None:
        log.warning("twilio status for an unknown message", message_sid=sid)
        return WebhookAnswer(received=1, applied=0, unknown=1)
    report = twilio.callback_report(message_id, fields)
    if report is None:
        return WebhookAnswer(received=1, applied=0)
    applied = await apply_statuses(conn=conn, reports=[report], source="report")
    return WebhookAnswer(received=1, applied=applied)
