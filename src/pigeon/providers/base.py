"""The provider contract: send a batch, say for each message what happened."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.messages.reports import StatusReport
from pigeon.messages.status import Status


@dataclass(frozen=True, slots=True)
class Outbound:
    """A claimed message as a provider sees it."""

    message_id: str
    account_id: str
    channel: str
    destination: str
    sender: str | None
    content: dict[str, Any]
    route: str


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The provider's answer for one message: accepted (PENDING) or refused (a final status)."""

    message_id: str
    status: Status
    provider_message_id: str | None = None
    error: dict[str, Any] | None = None
    raw: Any = None


class TransientError(Exception):
    """The provider could not take the batch now (timeout, 429, 5xx): try again later."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Provider(Protocol):
    """One module per provider implements this; only the dispatcher decides about retries."""

    name: str

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Send a batch; raise TransientError when none of it could be sent now."""
        ...

    async def poll_reports(self, *, conn: AsyncConnection) -> list[StatusReport]:
        """Status reports the provider has for us without a webhook (empty for most)."""
        ...
