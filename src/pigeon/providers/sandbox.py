"""The sandbox provider: nothing leaves the machine; Infobip's lifecycle is simulated.

Magic destinations produce each final status group, so client code can be tested:

| destination                                   | outcome                                     |
|-----------------------------------------------|---------------------------------------------|
| phone number ending in 0002, email `undeliverable@...` | UNDELIVERABLE_NOT_DELIVERED (group 2) |
| phone number ending in 0004, email `expired@...`       | EXPIRED_EXPIRED (group 4)             |
| phone number ending in 0005, email `rejected@...`      | REJECTED_DESTINATION (group 5), at send |
| anything else                                 | DELIVERED_TO_HANDSET (group 3)              |

Accepted messages go PENDING_ACCEPTED -> PENDING_ENROUTE at send, then to their final status
once `PIGEON_SANDBOX_REPORT_DELAY` seconds have passed (the simulated delivery report).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from pigeon.clock import utcnow
from pigeon.db.tables import messages
from pigeon.messages import status
from pigeon.messages.reports import StatusReport
from pigeon.messages.status import Status
from pigeon.providers.base import (
    Outbound,
    ProviderCall,
    SendOutcome,
    normalised_error,
    provider_error,
)

NO_ERROR = {
    "groupId": 0,
    "groupName": "OK",
    "id": 0,
    "name": "NO_ERROR",
    "description": "No Error",
    "permanent": False,
}
ABSENT_SUBSCRIBER = {
    "groupId": 1,
    "groupName": "HANDSET_ERRORS",
    "id": 27,
    "name": "EC_ABSENT_SUBSCRIBER",
    "description": "Absent Subscriber",
    "permanent": False,
}
VALIDITY_EXPIRED = {
    "groupId": 1,
    "groupName": "HANDSET_ERRORS",
    "id": 5001,
    "name": "EC_VALIDITY_EXPIRED",
    "description": "Validity period expired",
    "permanent": False,
}
DESTINATION_REJECTED = {
    "groupId": 2,
    "groupName": "USER_ERRORS",
    "id": 5002,
    "name": "EC_DESTINATION_REJECTED",
    "description": "Destination rejected by the sandbox (magic destination)",
    "permanent": True,
}

# A refusal at send time, in the one error shape (reports keep Infobip's own error objects).
REFUSED_AT_SEND = provider_error(
    "sandbox",
    id=5002,
    name="EC_DESTINATION_REJECTED",
    description="Destination rejected by the sandbox (magic destination)",
    permanent=True,
    raw=DESTINATION_REJECTED,
    groupId=2,
    groupName="USER_ERRORS",
)

_OUTCOMES: dict[str, tuple[Status, dict[str, Any]]] = {
    "undeliverable": (status.UNDELIVERABLE, ABSENT_SUBSCRIBER),
    "expired": (status.EXPIRED, VALIDITY_EXPIRED),
    "rejected": (status.REJECTED, DESTINATION_REJECTED),
}
_SUFFIXES = {"0002": "undeliverable", "0004": "expired", "0005": "rejected"}


def magic_outcome(destination: str) -> str | None:
    """Which magic outcome a destination asks for, if any."""
    if "@" in destination:
        local = destination.split("@", 1)[0].split("+", 1)[0].lower()
        return local if local in _OUTCOMES else None
    return _SUFFIXES.get(destination[-4:])


def final_report(
    message_id: str, destination: str, provider_message_id: str | None
) -> StatusReport:
    """The delivery report the sandbox sends for a message it accepted."""
    outcome = magic_outcome(destination)
    final, error = _OUTCOMES[outcome] if outcome else (status.DELIVERED, None)
    raw = {
        "messageId": provider_message_id,
        "to": destination,
        "status": {
            "groupId": final.groupId,
            "groupName": final.groupName,
            "id": final.id,
            "name": final.name,
            "description": final.description,
        },
        "error": error or NO_ERROR,
        "doneAt": utcnow().isoformat(),
    }
    shaped = normalised_error("sandbox", {**error, "raw": error}) if error else None
    return StatusReport(message_id=message_id, status=final, error=shaped, raw=raw)


class SandboxProvider:
    """Accepts everything (but magic rejections) and reports outcomes after a delay."""

    name = "sandbox"
    channels = frozenset({"sms", "whatsapp", "email"})

    def __init__(self, *, report_delay: float) -> None:
        self._delay = timedelta(seconds=report_delay)

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Accept the batch; magic `rejected` destinations are refused at once, like Infobip."""
        outcomes = []
        for message in batch:
            provider_id = f"sandbox-{message.message_id}"
            if magic_outcome(message.destination) == "rejected":
                outcomes.append(
                    SendOutcome(
                        message.message_id, status.REJECTED, provider_id, error=REFUSED_AT_SEND
                    )
                )
            else:
                outcomes.append(SendOutcome(message.message_id, status.ENROUTE, provider_id))
        return outcomes

    async def aclose(self) -> None:
        """Nothing to release."""

    def poll_reports(self, conn: Connection) -> list[StatusReport]:
        """Delivery reports for sandbox messages that have been en route long enough (read on
        the snapshot the worker decides their changes on)."""
        due = utcnow() - self._delay
        rows = conn.execute(
            select(messages.c.id, messages.c.destination, messages.c.provider_message_id)
            .where(
                messages.c.provider == self.name,
                messages.c.status_id == status.ENROUTE.id,
                messages.c.sent_at <= due,
            )
            .limit(1000)
        )
        return [final_report(r.id, r.destination, r.provider_message_id) for r in rows]


class SandboxPeople:
    """The People sync standing in for Infobip's: persons kept in memory, always synced."""

    def __init__(self) -> None:
        self.persons: dict[str, dict[str, Any]] = {}

    async def upsert_person(
        self,
        *,
        external_id: str,
        first_name: str | None,
        last_name: str | None,
        phones: list[str],
        emails: list[str],
    ) -> ProviderCall:
        """Keep the person (nothing leaves the machine); the sync always succeeds."""
        self.persons[external_id] = {
            "firstName": first_name,
            "lastName": last_name,
            "phones": phones,
            "emails": emails,
        }
        return ProviderCall.of(200, f'{{"externalId": "{external_id}"}}', 0.0)
