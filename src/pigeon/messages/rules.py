"""The rules of accepting a message, as pure functions over rows already read.

The accept path reads everything a batch of requests needs in a few queries, then applies
these rules to each request: who the recipient is, where it is reached, whether its channel
allows the message now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from pigeon.config import Settings
from pigeon.errors import NotFound, Unprocessable, field_error
from pigeon.ids import is_object_id
from pigeon.messages.schemas import (
    Channel,
    EmailContent,
    Template,
    TemplateData,
    TextContent,
    WhatsAppContent,
)

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


def _whatsapp_template(content: WhatsAppContent) -> Template | None:
    """The template a WhatsApp content names (in either form), or None for text."""
    orangepill = content.templateName is not None
    if not orangepill and (content.templateData is not None or content.language is not None):
        raise field_error("content.templateName", "templateData and language need a templateName")
    if [content.text is not None, content.template is not None, orangepill].count(True) != 1:
        raise Unprocessable(
            "WhatsApp content takes either text or a template",
            code="validation_error",
            errors=[
                {"field": "content.text", "message": "give text, template or templateName: one"}
            ],
        )
    if not orangepill:
        return content.template
    if content.language is None:
        raise field_error("content.language", "a template needs its language, e.g. en")
    data = content.templateData or TemplateData()
    return Template(
        name=content.templateName or "",
        language=content.language,
        placeholders=data.body.placeholders,
    )


def checked_content(channel: Channel, content: Content) -> dict[str, Any]:
    """Validate content beyond its shape: non-empty text; an email needs a subject and a body."""
    if isinstance(content, WhatsAppContent):
        template = _whatsapp_template(content)
        if template is not None:
            return {"template": msgspec.to_builtins(template)}
        content = TextContent(text=content.text or "")
    if isinstance(content, TextContent):
        if not content.text.strip():
            raise field_error("content.text", "must not be empty", code="empty_text")
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


def platform_sender(settings: Settings, channel: Channel) -> str:
    """The operator's sender for a channel."""
    return {
        "sms": settings.sms_sender,
        "whatsapp": settings.whatsapp_sender,
        "email": settings.email_sender,
    }[channel]


def _missing_channel(field: str, what: str) -> Unprocessable:
    return Unprocessable(
        f"{what} has no {field} set",
        code="channel_not_set",
        errors=[{"field": field, "message": "not set"}],
    )


def user_destination(user: Any, user_id: str, account_id: str, channel: Channel) -> str:
    """Where a User is reached on a channel; another tenant's user is as missing as none."""
    if user is None or user.account_id != account_id or not is_object_id(user_id):
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    if not user.active:
        raise Unprocessable(f"user {user_id} is not active", code="user_inactive")
    destination: str | None = getattr(user, f"channel_{channel}")
    if not destination:
        raise _missing_channel(f"channel.{channel}", f"user {user_id}")
    return destination


def person_destination(
    identity: Any, identity_id: str, account_id: str, channel: Channel, extension: Any
) -> tuple[str, str | None]:
    """Where a Person is reached, and the tenant's sender for the channel."""
    if identity is None or identity.account_id != account_id:
        raise NotFound(f"identity {identity_id} not found", code="identity_not_found")
    if identity.type != "person":
        raise Unprocessable(
            f"identity {identity_id} is a {identity.type}, not a person", code="not_a_person"
        )
    if extension is None:
        raise Unprocessable(
            "messaging Persons needs the Infobip extension: enable it with "
            "PUT /v1/extensions/infobip",
            code="infobip_extension_not_enabled",
        )
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
    sender: str | None = getattr(extension, f"{channel}_sender")
    if channel != "sms" and not sender:
        raise Unprocessable(
            f"the Infobip extension has no {channel}Sender: set it with PUT /v1/extensions/infobip",
            code="extension_sender_missing",
            errors=[{"field": f"{channel}Sender", "message": "not set"}],
        )
    return destination, sender


def check_whatsapp_window(
    last_inbound_at: datetime | None,
    *,
    business_number: str,
    customer_number: str,
    window: timedelta,
    now: datetime,
    template: bool,
) -> None:
    """WhatsApp's rule: only people who wrote first; free-form text only within the window."""
    if last_inbound_at is None:
        raise Unprocessable(
            f"{customer_number} has never written to WhatsApp number {business_number}: "
            "WhatsApp lets a business message only people who have contacted it first",
            code="whatsapp_no_interaction",
        )
    if not template and now - last_inbound_at > window:
        hours = int(window.total_seconds() // 3600)
        raise Unprocessable(
            f"{customer_number} last wrote to WhatsApp number {business_number} at "
            f"{last_inbound_at.isoformat()}, more than {hours} hours ago: WhatsApp allows "
            "free-form messages only within 24 hours of the customer's last message; "
            "send a template",
            code="whatsapp_window_closed",
        )
