"""Infobip's webhook payloads: delivery reports and inbound WhatsApp messages."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

# The most entries one webhook request may carry (Infobip sends at most a few hundred per
# POST); a longer `results` is answered 422 before anything is applied.
MAX_WEBHOOK_ENTRIES = 1000


class ReportStatus(msgspec.Struct):
    groupId: int
    id: int
    groupName: str | None = None
    name: str | None = None
    description: str | None = None


class DeliveryReport(msgspec.Struct):
    messageId: str
    status: ReportStatus
    to: str | None = None
    bulkId: str | None = None
    doneAt: str | None = None
    error: dict[str, Any] | None = None


class DeliveryReports(msgspec.Struct):
    """Infobip's SMS, WhatsApp and Email report format: {"results": [...]}."""

    results: Annotated[list[DeliveryReport], Meta(max_length=MAX_WEBHOOK_ENTRIES)]


class InboundMessage(msgspec.Struct, rename={"from_": "from"}):
    from_: str
    to: str
    receivedAt: str | None = None
    messageId: str | None = None
    message: Any = None
    contact: Any = None


class InboundMessages(msgspec.Struct):
    """Infobip's inbound WhatsApp format: {"results": [{"from", "to", "receivedAt", ...}]}."""

    results: Annotated[list[InboundMessage], Meta(max_length=MAX_WEBHOOK_ENTRIES)]


class WebhookAnswer(msgspec.Struct):
    received: int
    applied: int
    unknown: int = 0
