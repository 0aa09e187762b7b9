"""The Twilio provider: SMS and WhatsApp through the Programmable Messaging API.

One form-encoded `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` per message (Twilio
takes no batches), with HTTP basic auth (the Account SID and auth token). WhatsApp addresses
are `whatsapp:+<number>`; a WhatsApp template goes as Twilio's `ContentSid` (the template's
name, `HX...`) with its placeholders as `ContentVariables`. Twilio's error body
(`code`, `message`, `more_info`, `status`) is kept as the error's `raw`: 429 and 5xx are
transient, other 4xx permanent with Twilio's code.

Status callbacks come back to `/v1/webhooks/twilio/{owner}/{token}/status`, signed with
`X-Twilio-Signature`: base64(HMAC-SHA1(auth token, the full URL Twilio was given followed by
every POST parameter's name and value, sorted by name)). `STATUSES` maps Twilio's message
statuses onto Infobip's catalogue.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from sqlalchemy import Connection

from pigeon.messages import status
from pigeon.messages.reports import StatusReport
from pigeon.messages.status import CATALOGUE, Status
from pigeon.providers.base import (
    Outbound,
    ProviderCall,
    SendOutcome,
    provider_error,
)
from pigeon.providers.infobip import parse_retry_after

NAME = "twilio"
MESSAGES_PATH = "/2010-04-01/Accounts/{account_sid}/Messages.json"
CONCURRENCY = 16

# Twilio's message statuses, as Infobip's catalogue names them. None: not about our sends.
STATUSES: dict[str, Status | None] = {
    "accepted": CATALOGUE[26],  # PENDING_ACCEPTED (a Messaging Service took it)
    "scheduled": CATALOGUE[26],  # PENDING_ACCEPTED
    "queued": CATALOGUE[7],  # PENDING_ENROUTE
    "sending": CATALOGUE[7],  # PENDING_ENROUTE
    "sent": CATALOGUE[3],  # PENDING_WAITING_DELIVERY (the carrier has it)
    "delivered": CATALOGUE[5],  # DELIVERED_TO_HANDSET
    "read": CATALOGUE[5],  # DELIVERED_TO_HANDSET (WhatsApp: read implies delivered)
    "partially_delivered": CATALOGUE[2],  # DELIVERED_TO_OPERATOR
    "undelivered": CATALOGUE[9],  # UNDELIVERABLE_NOT_DELIVERED
    "failed": CATALOGUE[4],  # UNDELIVERABLE_REJECTED_OPERATOR (never left Twilio)
    "canceled": CATALOGUE[14],  # REJECTED_DESTINATION
    "receiving": None,
    "received": None,
}

# Twilio error codes that say more than REJECTED_DESTINATION.
REFUSALS: dict[int, Status] = {
    21211: CATALOGUE[18],  # invalid 'To' number
    21614: CATALOGUE[18],  # 'To' is not a mobile number
    21612: CATALOGUE[6],  # Twilio cannot route to this number
    21408: CATALOGUE[6],  # region not enabled
    21610: CATALOGUE[10],  # the recipient replied STOP
    21212: CATALOGUE[51],  # invalid 'From' number
    21606: CATALOGUE[51],  # 'From' is not a valid, SMS-capable number
    21659: CATALOGUE[51],  # 'From' is not a Twilio number
    63007: CATALOGUE[51],  # no WhatsApp sender for 'From'
}


@dataclass(frozen=True)
class TwilioAccount:
    """The platform's Twilio account and senders."""

    base_url: str
    account_sid: str
    auth_token: str
    sms_from: str | None
    messaging_service_sid: str | None
    whatsapp_from: str | None
    status_callback: str | None


def status_callback_url(base_url: str, owner: str, token: str) -> str:
    """Where Twilio posts a message's status changes."""
    return f"{base_url.rstrip('/')}/v1/webhooks/twilio/{owner}/{token}/status"


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature for a POST: the URL, then the sorted names and values."""
    values: dict[str, set[str]] = {}
    for key, value in params:
        values.setdefault(key, set()).add(value)
    data = url + "".join(k + v for k in sorted(values) for v in sorted(values[k]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], given: str | None
) -> bool:
    """Whether a callback's signature is Twilio's for this URL and body (constant time)."""
    if not given or not auth_token:
        return False
    expected = signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), given.encode())


def _address(number: str, channel: str) -> str:
    """A number as Twilio wants it: E.164, with `whatsapp:` in front for WhatsApp."""
    bare = number.removeprefix("whatsapp:").strip()
    e164 = bare if bare.startswith("+") else f"+{bare}"
    return f"whatsapp:{e164}" if channel == "whatsapp" else e164


def twilio_error(
    body: Any, http_status: int | None, text: str, *, permanent: bool
) -> dict[str, Any]:
    """Twilio's error (`code`, `message`, `more_info`, `status`) in the one shape."""
    if isinstance(body, Mapping) and "code" in body and "message" in body:
        code = body.get("code")
        return provider_error(
            NAME,
            id=str(code),
            name=f"TWILIO_{code}",
            description=str(body.get("message") or ""),
            permanent=permanent,
            raw={k: body.get(k) for k in ("code", "message", "more_info", "status")},
            http_status=http_status,
        )
    if http_status is None:
        return provider_error(
            NAME, id="NO_RESPONSE", name="NO_RESPONSE", description=text, permanent=False
        )
    # Not Twilio's error format (a proxy's page, say): its body stays in the attempt log only.
    return provider_error(
        NAME,
        id=f"HTTP_{http_status}",
        name=f"HTTP_{http_status}",
        description=f"Twilio answered HTTP {http_status}",
        permanent=permanent,
        http_status=http_status,
    )


def callback_error(params: Mapping[str, str]) -> dict[str, Any] | None:
    """The error a status callback reports (`ErrorCode`, `ErrorMessage`), if any."""
    code = (params.get("ErrorCode") or "").strip()
    if not code or code == "0":
        return None
    described = params.get("ErrorMessage") or f"Twilio error {code}"
    return provider_error(
        NAME,
        id=code,
        name=f"TWILIO_{code}",
        description=f"{described} (https://www.twilio.com/docs/errors/{code})",
        permanent=True,
        raw={"ErrorCode": code, "ErrorMessage": params.get("ErrorMessage")},
    )


def callback_report(message_id: str, params: Mapping[str, str]) -> StatusReport | None:
    """A status callback as a report on our message; None for a status we do not track."""
    found = STATUSES.get((params.get("MessageStatus") or "").lower())
    if found is None:
        return None
    error = callback_error(params) if found.is_final else None
    return StatusReport(message_id, found, error, dict(params))


class TwilioProvider:
    """Sends SMS and WhatsApp through one Twilio account on a shared httpx client."""

    name = NAME
    channels = frozenset({"sms", "whatsapp"})

    def __init__(self, account: TwilioAccount, client: httpx.AsyncClient) -> None:
        self.account = account
        self._client = client
        self._url = account.base_url.rstrip("/") + MESSAGES_PATH.format(
            account_sid=account.account_sid
        )
        self._auth = httpx.BasicAuth(account.account_sid, account.auth_token)

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """One request per message, a bounded number at a time."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(message: Outbound) -> SendOutcome:
            async with gate:
                return await self._send_one(message)

        return list(await asyncio.gather(*(bounded(m) for m in batch)))

    def poll_reports(self, conn: Connection) -> list[StatusReport]:
        """Nothing to poll: Twilio posts status callbacks."""
        return []

    async def aclose(self) -> None:
        """The HTTP client is the registry's."""

    def form(self, message: Outbound) -> list[tuple[str, str]] | str:
        """The message's form fields, or why Twilio cannot carry it."""
        account = self.account
        fields = [("To", _address(message.destination, message.channel))]
        if message.channel == "whatsapp":
            if not account.whatsapp_from:
                return "no WhatsApp sender (PIGEON_TWILIO_WHATSAPP_FROM)"
            fields.append(("From", _address(account.whatsapp_from, "whatsapp")))
        elif account.messaging_service_sid:
            fields.append(("MessagingServiceSid", account.messaging_service_sid))
        elif account.sms_from:
            fields.append(("From", account.sms_from))
        else:
            return "no SMS sender (PIGEON_TWILIO_SMS_FROM or PIGEON_TWILIO_MESSAGING_SERVICE_SID)"
        template = message.content.get("template")
        if isinstance(template, Mapping):
            content_sid = str(template.get("name", ""))
            if not content_sid.startswith("HX"):
                return "Twilio sends WhatsApp templates by Content SID: name the template HX..."
            placeholders = template.get("placeholders") or []
            variables = {str(i): str(p) for i, p in enumerate(placeholders, start=1)}
            fields.append(("ContentSid", content_sid))
            fields.append(("ContentVariables", msgspec.json.encode(variables).decode()))
        else:
            fields.append(("Body", str(message.content.get("text", ""))))
        if account.status_callback:
            fields.append(("StatusCallback", account.status_callback))
        return fields

    async def _send_one(self, message: Outbound) -> SendOutcome:
        fields = self.form(message)
        if isinstance(fields, str):
            error = provider_error(
                NAME, id="NOT_SENDABLE", name="NOT_SENDABLE", description=fields, permanent=True
            )
            return SendOutcome(message.message_id, status.REJECTED_SOURCE, error=error)
        started = time.perf_counter()
        try:
            response = await self._client.post(
                self._url,
                data=dict(fields),
                auth=self._auth,
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
            failure = f"{kind} ({type(exc).__name__}): {exc}".rstrip(": ")
            error = twilio_error(None, None, failure, permanent=False)
            call = ProviderCall.of(None, failure, elapsed)
            return SendOutcome(
                message.message_id, status.ACCEPTED, error=error, call=call, transient=True
            )
        elapsed = (time.perf_counter() - started) * 1000
        call = ProviderCall.of(response.status_code, response.content, elapsed)
        body = _json_or_none(response.content)
        if 200 <= response.status_code < 300 and isinstance(body, dict) and body.get("sid"):
            found = STATUSES.get(str(body.get("status") or "")) or status.ACCEPTED
            if found.is_final and found.groupId != status.Group.DELIVERED:
                said = {
                    "ErrorCode": str(body.get("error_code") or ""),
                    "ErrorMessage": str(body.get("error_message") or ""),
                }
                return SendOutcome(
                    message.message_id,
                    found,
                    str(body["sid"]),
                    error=callback_error(said),
                    raw=body,
                    call=call,
                )
            return SendOutcome(message.message_id, found, str(body["sid"]), raw=body, call=call)
        return self._refused(message, response, body, call)

    def _refused(
        self, message: Outbound, response: httpx.Response, body: Any, call: ProviderCall
    ) -> SendOutcome:
        """A non-2xx answer: transient (429, 5xx) or refused for good with Twilio's code."""
        code = response.status_code
        if 200 <= code < 300:
            code = 502  # a 2xx without a message resource: not what Twilio promises
        transient = code == 429 or code >= 500
        error = twilio_error(body, code, response.text, permanent=not transient)
        if transient:
            return SendOutcome(
                message.message_id,
                status.ACCEPTED,
                error=error,
                call=call,
                transient=True,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        twilio_code = body.get("code") if isinstance(body, Mapping) else None
        refused = REFUSALS.get(twilio_code) if isinstance(twilio_code, int) else None
        return SendOutcome(message.message_id, refused or status.REJECTED, error=error, call=call)


def _json_or_none(content: bytes) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        return None
