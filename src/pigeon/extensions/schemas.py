"""Wire shapes of the Infobip CDP extension."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

NonEmpty = Annotated[str, Meta(min_length=1, max_length=500)]


class InfobipExtensionIn(msgspec.Struct, forbid_unknown_fields=True):
    """The tenant's own Infobip account: where and as whom Persons' messages are sent."""

    baseUrl: NonEmpty
    apiKey: NonEmpty
    smsSender: Annotated[str, Meta(max_length=100)] | None = None
    whatsappSender: str | None = None
    emailSender: Annotated[str, Meta(max_length=320)] | None = None


class Webhooks(msgspec.Struct):
    deliveryReports: str
    inbound: str


class InfobipExtension(msgspec.Struct):
    enabled: bool
    baseUrl: str
    apiKey: str
    smsSender: str | None
    whatsappSender: str | None
    emailSender: str | None
    webhooks: Webhooks
    createdAt: datetime
    updatedAt: datetime
