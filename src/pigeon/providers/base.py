"""The provider contract: what every provider adapter does, and the shapes it answers in.

A provider is one module (`sandbox`, `infobip`, `twilio`, `smtp`) with a class that
implements `Provider`:

- `send(batch)` takes claimed messages of one channel and answers one `SendOutcome` per
  message, in any order: accepted (a PENDING status and the provider's id; or, for a provider
  whose acceptance is final, like an SMTP relay's 250, that final status), refused for good
  (a final status and the error), or not taken now (`transient=True`: a timeout, a broken
  connection, 429 or 5xx). When a whole request fails it may raise `TransientError` or
  `PermanentError` instead; the dispatcher then gives every message of the batch that outcome.
- `poll_reports(conn)` returns reports the provider has without a webhook (the sandbox): a
  plain function, read on a snapshot just before the worker's write transaction that applies
  them (which checks the rows are still as read); providers that
  post webhooks return nothing here and have their own webhook route.
- `aclose()` releases what the provider holds (pooled connections).

A provider translates its own vocabulary (status codes, error formats) inside its module and
never decides about retries or failover: the dispatcher (`pigeon.dispatch.routing`) does.

Every refusal, at send time or in a later report, is stored and returned in one shape, built
by `provider_error`: `provider`, `id` (the provider's code), `name`, `description`,
`permanent`, and `raw` (the provider's own error object as it parsed, None when its answer was
not in its error format); `httpStatus` when an HTTP answer carried it, and a provider's extra
members beside them (Infobip's `violations`, an SMTP server's `stage`).

The Infobip People sync (CDP) is a separate contract, `PeopleSync`, that only Infobip (and
the sandbox standing in for it) implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection

from pigeon.messages.reports import StatusReport
from pigeon.messages.status import Status

CHANNELS = ("sms", "whatsapp", "email")


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
DESCRIPTION_LIMIT = 500


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One exchange with a provider (HTTP or SMTP), kept as the message's attempt log."""

    http_status: int | None
    body: str
    duration_ms: float

    @classmethod
    def of(cls, http_status: int | None, body: str | bytes, duration_ms: float) -> ProviderCall:
        """A call record with the body truncated to BODY_LIMIT characters."""
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return cls(http_status, text[:BODY_LIMIT], round(duration_ms, 1))


def provider_error(
    provider: str,
    *,
    id: str | int,
    name: str,
    description: str,
    permanent: bool,
    raw: Any = None,
    http_status: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A provider's refusal in Pigeon's one error shape (see the module docstring)."""
    error: dict[str, Any] = {
        "provider": provider,
        "id": id,
        "name": name,
        "description": description[:DESCRIPTION_LIMIT],
        "permanent": permanent,
        "raw": raw,
    }
    if http_status is not None:
        error["httpStatus"] = http_status
    error.update(extra)
    return error


def normalised_error(provider: str, error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Any error dict in the one shape: the members it lacks filled in, nothing it has lost."""
    if error is None:
        return None
    if "provider" in error and "raw" in error:
        return dict(error)
    found = dict(error)
    code = found.pop("id", None)
    return provider_error(
        str(found.pop("provider", provider)),
        id=code if code is not None else "ERROR",
        name=str(found.pop("name", None) or code or "ERROR"),
        description=str(found.pop("description", "") or ""),
        permanent=bool(found.pop("permanent", True)),
        raw=found.pop("raw", None),
        http_status=found.pop("httpStatus", None),
        **found,
    )


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The provider's answer for one message.

    Accepted: a PENDING status (or a final DELIVERED one) and the provider's id. Refused for
    good: a final status (REJECTED, UNDELIVERABLE) and the provider's error. Not taken this
    time: `transient=True` (the dispatcher fails over, or retries after a backoff).
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
    """A provider refused a whole request; carries its error object and the exchange."""

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
    channels: frozenset[str]

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Send a batch of one channel; raise TransientError when none of it could be sent."""
        ...

    def poll_reports(self, conn: Connection) -> list[StatusReport]:
        """Status reports the provider has for us without a webhook (empty for most), read in
        a snapshot just before the worker's write transaction that applies them."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections (nothing to do for most)."""
        ...


class PeopleSync(Protocol):
    """The Infobip People API (CDP sync): create or update the person for an identity."""

    async def upsert_person(
        self,
        *,
        external_id: str,
        first_name: str | None,
        last_name: str | None,
        phones: list[str],
        emails: list[str],
    ) -> ProviderCall:
        """Create or update the provider's CRM person for one of our identities."""
        ...
