"""The events a tenant can receive, and which status change makes which."""

from __future__ import annotations

from pigeon.messages import status
from pigeon.messages.status import Group, Status

CHANNELS = ("sms", "whatsapp", "email")
_MESSAGE_EVENTS = ("sent", "delivered", "failed")
WHATSAPP_RECEIVED = "whatsapp.message.received"
EVENT_TYPES: tuple[str, ...] = (
    *(
        f"{channel}.message.{what}"
        for channel in CHANNELS
        for what in ("sent", "delivered", "failed")
    ),
    WHATSAPP_RECEIVED,
)
_FAILED = (Group.UNDELIVERABLE, Group.EXPIRED, Group.REJECTED)


def message_event_type(channel: str, before: Status, after: Status) -> str | None:
    """The event a message's move from `before` to `after` makes, if any.

    Sent: a provider took it (accepted, now en route or waiting for its report); delivered:
    a DELIVERED status; failed: an UNDELIVERABLE, EXPIRED or REJECTED one.
    """
    if after.group == Group.DELIVERED:
        return f"{channel}.message.delivered"
    if after.group in _FAILED:
        return f"{channel}.message.failed"
    if before.id == status.ACCEPTED.id and after.id != status.ACCEPTED.id:
        return f"{channel}.message.sent"
    return None
