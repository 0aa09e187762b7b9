"""The SMTP provider: email through the operator's relay, with aiosmtplib.

Connections are pooled (`PIGEON_SMTP_POOL_SIZE`, each reused for message after message, one
mail transaction at a time) and secured as `PIGEON_SMTP_TLS` says: `starttls` (required, the
default, port 587), `tls` (implicit TLS, port 465) or `none`; with a username, AUTH follows.
Certificates are verified against the system's CAs (`SSL_CERT_FILE` names others).

What the relay answers decides the message's fate:

| answer                                   | outcome                                          |
|------------------------------------------|--------------------------------------------------|
| 250 after DATA                           | DELIVERED_TO_OPERATOR (final: the relay took it) |
| 550/551/552/553 mailbox codes (5.1.x, 5.2.x) at RCPT or DATA | UNDELIVERABLE_NOT_DELIVERED  |
| other 5xx at RCPT or DATA                | REJECTED_DESTINATION                             |
| 5xx at MAIL FROM                         | REJECTED_SOURCE                                  |
| 5xx to AUTH                              | REJECTED_SOURCE, every message of the batch      |
| 4xx, timeouts, dropped connections       | transient                                        |

The relay's answer (`250 2.0.0 Ok: queued as ...`, or its refusal) is kept in the attempt,
and a refusal's code, text and stage in the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from sqlalchemy import Connection

from pigeon.clock import utcnow
from pigeon.messages import status
from pigeon.messages.reports import StatusReport
from pigeon.messages.status import CATALOGUE, Status
from pigeon.providers.base import Outbound, ProviderCall, SendOutcome, provider_error
from pigeon.providers.mime import build_email, message_id_header, sender_address

NAME = "smtp"
DELIVERED_TO_OPERATOR = CATALOGUE[2]
MAILBOX_CODES = frozenset({550, 551, 552, 553})
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# What the connection may have failed with before any SMTP reply: all "try again later".
_BROKEN = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)


@dataclass(frozen=True)
class SmtpRelay:
    """Where and how to reach the relay, and whom to send as."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: str  # "starttls", "tls" or "none"
    timeout: float
    pool_size: int
    sender: str


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An SMTP reply that was not a yes, and the command it answered."""

    stage: str
    code: int
    text: str


def enhanced_status(text: str) -> str | None:
    """The enhanced status code (RFC 3463) at the start of a reply's text, e.g. 5.1.1."""
    found = _ENHANCED.match(text)
    return found.group(1) if found else None


def refusal_status(refusal: _Refusal) -> Status:
    """A permanent refusal as a catalogue status."""
    if refusal.stage in ("MAIL FROM", "AUTH"):
        return status.REJECTED_SOURCE
    enhanced = enhanced_status(refusal.text)
    if refusal.code in MAILBOX_CODES and (enhanced is None or enhanced[:4] in ("5.1.", "5.2.")):
        return status.UNDELIVERABLE
    return status.REJECTED


def smtp_error(refusal: _Refusal) -> dict[str, Any]:
    """A relay's refusal in the one error shape."""
    return provider_error(
        NAME,
        id=str(refusal.code),
        name=f"SMTP_{refusal.code}",
        description=f"{refusal.stage}: {refusal.code} {refusal.text}",
        permanent=refusal.code >= 500,
        raw={"code": refusal.code, "message": refusal.text, "stage": refusal.stage},
        stage=refusal.stage,
    )


def _broken_error(stage: str, exc: BaseException) -> dict[str, Any]:
    kind = (
        "timeout"
        if isinstance(exc, (aiosmtplib.SMTPTimeoutError, TimeoutError))
        else ("connection error")
    )
    return provider_error(
        NAME,
        id="NO_RESPONSE",
        name="NO_RESPONSE",
        description=f"{stage}: {kind} ({type(exc).__name__}): {exc}".rstrip(": "),
        permanent=False,
        stage=stage,
    )


class SmtpPool:
    """Up to `size` open connections to the relay, each lent to one transaction at a time."""

    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay
        self._idle: list[aiosmtplib.SMTP] = []
        self._gate = asyncio.Semaphore(relay.pool_size)
        self.opened = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        relay = self.relay
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            username=relay.username or None,
            password=relay.password or None,
            use_tls=relay.tls == "tls",
            start_tls=relay.tls == "starttls",
            timeout=relay.timeout,
        )
        await client.connect()
        self.opened += 1
        return client

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[tuple[aiosmtplib.SMTP, bool]]:
        """A connection (and whether it was reused); broken ones are not put back."""
        async with self._gate:
            client = self._idle.pop() if self._idle else None
            reused = client is not None and client.is_connected
            if client is None or not reused:
                client = await self._connect()
            healthy = False
            try:
                yield client, reused
                healthy = client.is_connected
            finally:
                if healthy:
                    self._idle.append(client)
                else:
                    client.close()

    async def aclose(self) -> None:
        """QUIT every idle connection."""
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()


class SmtpProvider:
    """Sends email through the platform's SMTP relay."""

    name = NAME
    channels = frozenset({"email"})

    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay
        self.pool = SmtpPool(relay)

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Each email in its own mail transaction, as many at once as the pool has room."""
        return list(await asyncio.gather(*(self._send_one(m) for m in batch)))

    def poll_reports(self, conn: Connection) -> list[StatusReport]:
        """Nothing to poll: the relay's 250 is the last word Pigeon gets."""
        return []

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.pool.aclose()

    async def _send_one(self, message: Outbound) -> SendOutcome:
        sender = self.relay.sender
        email = build_email(
            message_id=message.message_id,
            sender=sender,
            to=message.destination,
            subject=str(message.content.get("subject") or ""),
            text=message.content.get("text"),
            html=message.content.get("html"),
            now=utcnow(),
        )
        data = email.as_bytes()
        started = time.perf_counter()
        for _ in range(2):  # once more on a fresh connection if a pooled one had gone stale
            outcome, stale = await self._transaction(message, data, started)
            if not stale:
                return outcome
        return outcome

    async def _transaction(
        self, message: Outbound, data: bytes, started: float
    ) -> tuple[SendOutcome, bool]:
        """One MAIL/RCPT/DATA; the outcome, and whether a reused connection was found dead."""
        stage = "CONNECT"
        try:
            async with self.pool.connection() as (client, reused):
                try:
                    stage = "MAIL FROM"
                    await client.mail(sender_address(self.relay.sender))
                    stage = "RCPT TO"
                    await client.rcpt(message.destination)
                    stage = "DATA"
                    answer = await client.data(data)
                except aiosmtplib.SMTPResponseException as exc:
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                        await client.rset()
                    return self._refused(
                        message, _Refusal(stage, exc.code, exc.message), started
                    ), False
                except _BROKEN as exc:
                    stale = reused and stage == "MAIL FROM"
                    return self._broken(message, stage, started, exc), stale
        except aiosmtplib.SMTPAuthenticationError as exc:
            return self._refused(message, _Refusal("AUTH", exc.code, exc.message), started), False
        except aiosmtplib.SMTPResponseException as exc:
            # The greeting, EHLO or STARTTLS refused: the relay's own words decide.
            return self._refused(message, _Refusal(stage, exc.code, exc.message), started), False
        except (*_BROKEN, aiosmtplib.SMTPException) as exc:
            return self._broken(message, stage, started, exc), False
        reply = f"{answer.code} {answer.message}"
        call = ProviderCall.of(None, reply, (time.perf_counter() - started) * 1000)
        provider_id = message_id_header(message.message_id, self.relay.sender)
        outcome = SendOutcome(message.message_id, DELIVERED_TO_OPERATOR, provider_id, call=call)
        return outcome, False

    def _refused(self, message: Outbound, refusal: _Refusal, started: float) -> SendOutcome:
        call = ProviderCall.of(
            None, f"{refusal.code} {refusal.text}", (time.perf_counter() - started) * 1000
        )
        error = smtp_error(refusal)
        if refusal.code < 500:
            return SendOutcome(
                message.message_id, status.ACCEPTED, error=error, call=call, transient=True
            )
        return SendOutcome(message.message_id, refusal_status(refusal), error=error, call=call)

    def _broken(
        self, message: Outbound, stage: str, started: float, exc: BaseException
    ) -> SendOutcome:
        error = _broken_error(stage, exc)
        call = ProviderCall.of(None, error["description"], (time.perf_counter() - started) * 1000)
        return SendOutcome(
            message.message_id, status.ACCEPTED, error=error, call=call, transient=True
        )
