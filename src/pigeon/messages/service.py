"""Accepting messages: resolve the destination, check the channel's rules, store durably."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.clock import utcnow
from pigeon.config import Settings
from pigeon.db.tables import message_events, messages
from pigeon.errors import Unprocessable, field_error
from pigeon.extensions.service import tenant_route
from pigeon.identities.service import get_identity_row
from pigeon.ids import new_message_id
from pigeon.messages import status, whatsapp
from pigeon.messages.schemas import (
    SMS_MAX,
    AcceptedMessage,
    Channel,
    EmailContent,
    SendResponse,
    TextContent,
    WhatsAppContent,
)
from pigeon.users.service import get_user_row
from pigeon.validation import normalize_email, normalize_phone

Content = TextContent | WhatsAppContent | EmailContent


@dataclass(frozen=True, slots=True)
class Draft:
    """A message whose destination is resolved and whose rules are checked, ready to store."""

    account_id: str
    channel: Channel
    recipient_type: str
    recipient_id: str | None
    destination: str
    route: str
    sender: str | None
    content: dict[str, Any]


def checked_content(channel: Channel, content: Content) -> dict[str, Any]:
    """Validate content beyond its shape: non-empty text; an email needs a subject and a body."""
    if isinstance(content, WhatsAppContent):
        if (content.text is None) == (content.template is None):
            raise Unprocessable(
                "WhatsApp content takes either text or a template",
                code="validation_error",
                errors=[{"field": "content.text", "message": "give text or template, not both"}],
            )
        if content.template is not None:
            return {"template": msgspec.to_builtins(content.template)}
        content = TextContent(text=content.text or "")
    if isinstance(content, TextContent):
        if not content.text.strip():
            raise field_error("content.text", "must not be empty", code="empty_text")
        if channel == "sms" and len(content.text) > SMS_MAX:
            raise field_error("content.text", f"an SMS holds at most {SMS_MAX} characters")
        return {"text": content.text}
    if not content.subject or not content.subject.strip():
        raise field_error("content.subject", "an email needs a subject", code="missing_subject")
    if not (content.html and content.html.strip()) and not (content.text and content.text.strip()):
        raise Unprocessable(
            "an email needs a body: content.html, content.text or both",
            code="missing_body",
            errors=[
                {"field": "content.html", "message": "html or text is required"},
                {"field": "content.text", "message": "html or text is required"},
            ],
        )
    return msgspec.to_builtins(content)  # type: ignore[no-any-return]


def _missing_channel(field: str, what: str) -> Unprocessable:
    return Unprocessable(
        f"{what} has no {field} set",
        code="channel_not_set",
        errors=[{"field": field, "message": "not set"}],
    )


async def draft_for_user(
    *,
    conn: AsyncConnection,
    settings: Settings,
    account_id: str,
    user_id: str,
    channel: Channel,
    content: Content,
) -> Draft:
    """A message to a platform User, sent from the operator's account."""
    checked = checked_content(channel, content)
    user = await get_user_row(conn=conn, account_id=account_id, user_id=user_id)
    if not user.active:
        raise Unprocessable(f"user {user_id} is not active", code="user_inactive")
    destination = getattr(user, f"channel_{channel}")
    if not destination:
        raise _missing_channel(f"channel.{channel}", f"user {user_id}")
    if channel == "whatsapp":
        await whatsapp.check_window(
            conn=conn,
            owner=whatsapp.PLATFORM,
            business_number=settings.whatsapp_sender,
            customer_number=destination,
            window=timedelta(seconds=settings.whatsapp_window_seconds),
            now=utcnow(),
            template="template" in checked,
        )
    return Draft(
        account_id,
        channel,
        "user",
        user_id,
        destination,
        "platform",
        platform_sender(settings, channel),
        checked,
    )


def platform_sender(settings: Settings, channel: Channel) -> str:
    """The operator's sender for a channel."""
    return {
        "sms": settings.sms_sender,
        "whatsapp": settings.whatsapp_sender,
        "email": settings.email_sender,
    }[channel]


async def draft_for_person(
    *,
    conn: AsyncConnection,
    settings: Settings,
    account_id: str,
    identity_id: str,
    channel: Channel,
    content: Content,
) -> Draft:
    """A message to a CRM Person, sent from the tenant's own Infobip account."""
    checked = checked_content(channel, content)
    identity = await get_identity_row(conn=conn, account_id=account_id, identity_id=identity_id)
    if identity.type != "person":
        raise Unprocessable(
            f"identity {identity_id} is a {identity.type}, not a person", code="not_a_person"
        )
    route = await tenant_route(conn=conn, account_id=account_id)
    contact = (identity.person or {}).get("contactInformation") or {}
    if channel == "email":
        field, entries, key = (
            "person.contactInformation.email[0].address",
            contact.get("email"),
            "address",
        )
    else:
        field, entries, key = (
            "person.contactInformation.phone[0].number",
            contact.get("phone"),
            "number",
        )
    destination = entries[0].get(key) if entries else None
    if not destination:
        raise _missing_channel(field, f"identity {identity_id}")
    sender = {
        "sms": route.sms_sender,
        "whatsapp": route.whatsapp_sender,
        "email": route.email_sender,
    }[channel]
    if channel != "sms" and not sender:
        raise Unprocessable(
            f"the Infobip extension has no {channel}Sender: set it with PUT /v1/extensions/infobip",
            code="extension_sender_missing",
            errors=[{"field": f"{channel}Sender", "message": "not set"}],
        )
    if channel == "whatsapp":
        assert sender is not None
        await whatsapp.check_window(
            conn=conn,
            owner=account_id,
            business_number=sender,
            customer_number=destination,
            window=timedelta(seconds=settings.whatsapp_window_seconds),
            now=utcnow(),
            template="template" in checked,
        )
    return Draft(account_id, channel, "person", identity_id, destination, "tenant", sender, checked)


async def draft_for_app(
    *,
    conn: AsyncConnection,
    settings: Settings,
    account_id: str,
    to: str,
    channel: Channel,
    content: Content,
) -> Draft:
    """A message to a recipient who is not on-boarded, sent from the operator's account."""
    checked = checked_content(channel, content)
    if channel == "email":
        destination = normalize_email(to, field="to")
    else:
        destination = normalize_phone(to, field="to")
    if channel == "whatsapp":
        await whatsapp.check_window(
            conn=conn,
            owner=whatsapp.PLATFORM,
            business_number=settings.whatsapp_sender,
            customer_number=destination,
            window=timedelta(seconds=settings.whatsapp_window_seconds),
            now=utcnow(),
            template="template" in checked,
        )
    return Draft(
        account_id,
        channel,
        "app",
        None,
        destination,
        "platform",
        platform_sender(settings, channel),
        checked,
    )


def message_rows(draft: Draft, now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message row and its first status event, PENDING_ACCEPTED."""
    message_id = new_message_id()
    message = {
        "id": message_id,
        "account_id": draft.account_id,
        "channel": draft.channel,
        "recipient_type": draft.recipient_type,
        "recipient_id": draft.recipient_id,
        "destination": draft.destination,
        "route": draft.route,
        "sender": draft.sender,
        "content": draft.content,
        "status_id": status.ACCEPTED.id,
        "group_id": status.ACCEPTED.groupId,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    event = {"message_id": message_id, "status_id": status.ACCEPTED.id, "source": "api", "at": now}
    return message, event


async def accept(*, conn: AsyncConnection, draft: Draft) -> SendResponse:
    """Store the message and its first event in the caller's transaction; answer as documented."""
    message, event = message_rows(draft, utcnow())
    await conn.execute(messages.insert().values(**message))
    await conn.execute(message_events.insert().values(**event))
    return SendResponse(
        messages=[
            AcceptedMessage(
                messageId=message["id"], status=status.ACCEPTED, destination=draft.destination
            )
        ]
    )
