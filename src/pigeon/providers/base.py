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


BODY_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One HTTP exchange with a provider, kept as the message's attempt log."""

    http_status: int | None
    body: str
    duration_ms: float

    @classmethod
    def of(cls, http_status: int | None, body: str | bytes, duration_ms: float) -> ProviderCall:
        """A call record with the body truncated to BODY_LIMIT characters."""
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return cls(http_status, text[:BODY_LIMIT], round(duration_ms, 1))


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The provider's answer for one message.

    Accepted: a PENDING status and the provider's id. Refused for good: a final status (REJECTED)
    and the provider's error. Not taken this time: `transient=True` (the dispatcher retries).
    """

    message_id: str
    status: Status
    provider_message_id: str | None = None
    error: dict[str, Any] | None = None
    raw: Any = None
    call: ProviderCall | None = None
    transient: bool = False
    retry_after: float | None = None


class ProviderError(Exception):
    """A provider refused a whole request; carries its error object and the HTTP exchange."""

    def __init__(
        self,
        reason: str,
        *,
        error: dict[str, Any] | None = None,
        call: ProviderCall | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.call = call


class TransientError(ProviderError):
    """The provider could not take the request now (timeout, 429, 5xx): try again later."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        error: dict[str, Any] | None = None,
        call: ProviderCall | None = None,
    ) -> None:
        super().__init__(reason, error=error, call=call)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """The provider refused the request for good (validation, credentials): do not retry."""


class Provider(Protocol):
    """One module per provider implements this; only the dispatcher decides about retries."""

    name: str

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Send a batch; raise TransientError when none of it could be sent now."""
        ...

    async def poll_reports(self, *, conn: AsyncConnection) -> list[StatusReport]:
        """Status reports the provider has for us without a webhook (empty for most)."""
        ...

    async def upsert_person(
        self,
        *,
        external_id: str,
        first_name: str | None,
        last_name: str | None,
        phones: list[str],
        emails: list[str],
    ) -> ProviderCall:
        """Create or update the provider's CRM person for one of our identities (CDP sync)."""
        ...
