"""Wire shapes of messages: request bodies exactly as documented, Infobip-style answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from pigeon.messages.status import Status

Channel = Literal["sms", "whatsapp", "email"]
CHANNELS: tuple[Channel, ...] = ("sms", "whatsapp", "email")

# An SMS longer than 160 GSM-7 characters (70 UCS-2) travels as several parts, each charged;
# Infobip's API sets no maximum on `text`, Pigeon stops at 1,600 characters (11 GSM-7 parts,
# 24 UCS-2 parts), as Twilio does. WhatsApp's own limit for a text message is 4,096.
SMS_MAX = 1600
WHATSAPP_MAX = 4096


class TextContent(msgspec.Struct, forbid_unknown_fields=True):
    """SMS content: text only."""

    text: Annotated[
        str,
        Meta(
            max_length=SMS_MAX,
            description=f"At most {SMS_MAX} characters; past 160 GSM-7 characters (70 with "
            "other characters) an SMS is sent, and charged, as several parts.",
        ),
    ]


TemplateName = Annotated[str, Meta(min_length=1, max_length=512)]
Language = Annotated[str, Meta(min_length=2, max_length=15, examples=["en", "en_GB"])]


class Template(msgspec.Struct, forbid_unknown_fields=True):
    """A pre-approved WhatsApp template: how a business writes outside the 24-hour window."""

    name: TemplateName
    language: Language
    placeholders: list[str] = msgspec.field(default_factory=list)


class TemplateBody(msgspec.Struct, forbid_unknown_fields=True):
    placeholders: list[str] = msgspec.field(default_factory=list)


class TemplateData(msgspec.Struct, forbid_unknown_fields=True):
    """Orangepill's (and Infobip's) template values: the body's placeholders, in order."""

    body: TemplateBody = msgspec.field(default_factory=TemplateBody)


class WhatsAppContent(msgspec.Struct, forbid_unknown_fields=True):
    """WhatsApp content: free-form `text`, or a template (exactly one of them).

    A template in either form: `template` {name, language, placeholders}, or Orangepill's
    `templateName`, `templateData.body.placeholders` and `language` beside it.
    """

    text: Annotated[str, Meta(max_length=WHATSAPP_MAX)] | None = None
    template: Template | None = None
    templateName: TemplateName | None = None
    templateData: TemplateData | None = None
    language: Language | None = None


class EmailContent(msgspec.Struct, forbid_unknown_fields=True):
    """Email content: a subject and an html and/or text body.

    When both bodies are given the email is sent as html, with the text as its plain alternative.
    """

    subject: Annotated[str, Meta(max_length=998)] | None = None
    html: Annotated[str, Meta(max_length=1_000_000)] | None = None
    text: Annotated[str, Meta(max_length=1_000_000)] | None = None


class TextMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: TextContent


class WhatsAppMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: WhatsAppContent


class EmailMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: EmailContent


class AppTextMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, Meta(min_length=1, max_length=320)]
    content: TextContent


class AppWhatsAppMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, Meta(min_length=1, max_length=320)]
    content: WhatsAppContent


class AppEmailMessageIn(msgspec.Struct, forbid_unknown_fields=True):
    to: Annotated[str, Meta(min_length=1, max_length=320)]
    content: EmailContent


class AcceptedMessage(msgspec.Struct):
    messageId: str
    status: Status
    destination: str


class SendResponse(msgspec.Struct):
    """The documented answer to every send."""

    messages: list[AcceptedMessage]


class Recipient(msgspec.Struct):
    type: Literal["user", "person", "app"]
    id: str | None


class StatusEvent(msgspec.Struct):
    status: Status
    at: datetime
    source: str
    detail: Any | None = None


class DeliveryAttempt(msgspec.Struct):
    """One try at handing the message to a provider."""

    at: datetime
    provider: str
    outcome: str  # accepted, rejected, transient or skipped
    httpStatus: int | None
    durationMs: float | None
    error: dict[str, Any] | None
    # The provider's answer (an SMTP relay's `250 ... queued as ...`); platform providers only.
    response: str | None = None


class MessageSummary(msgspec.Struct):
    messageId: str
    channel: Channel
    recipient: Recipient
    destination: str
    sender: str | None
    status: Status
    error: dict[str, Any] | None
    attempts: int
    provider: str | None
    providerMessageId: str | None
    createdAt: datetime
    updatedAt: datetime
    sentAt: datetime | None
    doneAt: datetime | None


class Message(MessageSummary):
    content: dict[str, Any]
    history: list[StatusEvent]
    deliveryAttempts: list[DeliveryAttempt] = msgspec.field(default_factory=list)


class MessageList(msgspec.Struct):
    items: list[MessageSummary]
    next_cursor: str | None
