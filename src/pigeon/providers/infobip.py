"""The Infobip provider: SMS v3, WhatsApp, Email v3 and the People API over HTTP.

Everything Infobip-specific lives here: paths, request bodies, the two error formats
(`requestError.serviceException` and the newer `errorCode`/`violations`), Retry-After.
Our message id travels as Infobip's `messageId`, so reports and retries line up with our rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx
import msgspec
from sqlalchemy import Connection

from pigeon.clock import utcnow
from pigeon.messages import status
from pigeon.messages.reports import StatusReport
from pigeon.messages.status import Group, Status, status_for
from pigeon.netguard import UrlNotAllowed
from pigeon.providers.base import (
    Outbound,
    PermanentError,
    ProviderCall,
    SendOutcome,
    TransientError,
    provider_error,
)

SMS_PATH = "/sms/3/messages"
WHATSAPP_TEXT_PATH = "/whatsapp/1/message/text"
WHATSAPP_TEMPLATE_PATH = "/whatsapp/1/message/template"
EMAIL_PATH = "/email/3/send"
PERSONS_PATH = "/people/2/persons"

# Per-message channels (WhatsApp, email) go out one request each; cap how many run at once.
CONCURRENCY = 16
# 408 and 429 say "not now", 5xx say "our side broke": all worth retrying later.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class InfobipAccount:
    """One Infobip account: where to call, how to authenticate, whom to send as."""

    base_url: str
    api_key: str
    sms_sender: str | None
    whatsapp_sender: str | None
    email_sender: str | None
    notify_url: str | None


@dataclass(frozen=True, slots=True)
class _Reply:
    """One HTTP exchange as we keep it: the answer, or why there was none."""

    http_status: int | None
    text: str
    body: Any
    retry_after: float | None
    duration_ms: float
    failure: str | None = None
    # Pigeon refused to call the account's URL (pigeon.netguard): nothing was sent.
    refused: bool = False

    @property
    def call(self) -> ProviderCall:
        """The exchange as the attempt log records it."""
        return ProviderCall.of(
            self.http_status, self.text or (self.failure or ""), self.duration_ms
        )

    @property
    def ok(self) -> bool:
        """Infobip took the request."""
        return self.http_status is not None and 200 <= self.http_status < 300


@dataclass(frozen=True, slots=True)
class _Problem:
    """A refused or failed request, classified."""

    reason: str
    error: dict[str, Any]
    transient: bool
    retry_after: float | None


def is_transient_status(http_status: int | None) -> bool:
    """Whether an HTTP status (None: no answer at all) is worth retrying."""
    return http_status is None or http_status in TRANSIENT_STATUSES or http_status >= 500


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or utcnow())).total_seconds())


def _status_name(http_status: int | None) -> str:
    """An HTTP status as an Infobip-style name, e.g. TOO_MANY_REQUESTS."""
    if http_status is None:
        return "NO_RESPONSE"
    try:
        return HTTPStatus(http_status).phrase.upper().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"HTTP_{http_status}"


def _phrase(http_status: int | None) -> str:
    """The reason phrase of an HTTP status, e.g. Bad Gateway."""
    try:
        return HTTPStatus(http_status or 0).phrase
    except ValueError:
        return "(unknown status)"


def _legacy_violations(validation: Any) -> list[dict[str, Any]]:
    """`validationErrors` ({property: [messages]}) as a list of violations."""
    if not isinstance(validation, Mapping):
        return []
    violations = []
    for prop, messages in validation.items():
        for message in messages if isinstance(messages, list) else [messages]:
            violations.append({"property": prop, "violation": str(message)})
    return violations


def parse_error(body: Any, http_status: int | None) -> dict[str, Any]:
    """Infobip's error, in either of its formats, as one dict that keeps what Infobip said."""
    permanent = not is_transient_status(http_status)
    if isinstance(body, Mapping):
        request_error = body.get("requestError")
        service = (
            request_error.get("serviceException") if isinstance(request_error, Mapping) else None
        )
        if isinstance(service, Mapping):
            code = service.get("messageId") or _status_name(http_status)
            return provider_error(
                "infobip",
                id=code,
                name=code,
                description=service.get("text") or "",
                permanent=permanent,
                raw=dict(body),
                violations=_legacy_violations(service.get("validationErrors")),
            )
        if "errorCode" in body:
            violations = body.get("violations")
            extras = {k: body[k] for k in ("action", "resources") if body.get(k)}
            return provider_error(
                "infobip",
                id=str(body["errorCode"]),
                name=_status_name(http_status),
                description=body.get("description") or body.get("errorMessage") or "",
                permanent=permanent,
                raw=dict(body),
                violations=list(violations) if isinstance(violations, list) else [],
                **extras,
            )
    # Not an Infobip error: its body stays in the attempt log, never in what the tenant sees
    # (it may be anything the URL's server had to say, an internal service's page included).
    name = _status_name(http_status)
    return provider_error(
        "infobip",
        id=name,
        name=name,
        description=f"HTTP {http_status} {_phrase(http_status)}, not an Infobip error answer",
        permanent=permanent,
        violations=[],
    )


def _describe(error: Mapping[str, Any]) -> str:
    """A one-line account of an error with Infobip's text and its violations."""
    text = f"{error['id']}: {error['description']}".rstrip(": ")
    violations = error.get("violations") or []
    details = "; ".join(
        f"{v.get('property')}: {v.get('violation')}" for v in violations if isinstance(v, Mapping)
    )
    return f"{text} ({details})" if details else text


def _problem(reply: _Reply) -> _Problem | None:
    """None when Infobip took the request; otherwise what went wrong and whether to retry."""
    if reply.ok:
        return None
    if reply.refused:
        failure = reply.failure or "not allowed"
        error = provider_error(
            "infobip",
            id="URL_NOT_ALLOWED",
            name="URL_NOT_ALLOWED",
            description=f"Pigeon refuses to call this Infobip account's {failure}",
            permanent=True,
            violations=[],
        )
        return _Problem(f"refused to call the account's {failure}", error, False, None)
    if reply.http_status is None:
        failure = reply.failure or "no answer"
        error = provider_error(
            "infobip",
            id="NO_RESPONSE",
            name="NO_RESPONSE",
            description=failure,
            permanent=False,
            violations=[],
        )
        return _Problem(f"Infobip did not answer: {failure}", error, True, None)
    error = parse_error(reply.body, reply.http_status)
    error["httpStatus"] = reply.http_status
    transient = is_transient_status(reply.http_status)
    if reply.http_status in (401, 403):
        reason = f"Infobip refused our credentials (HTTP {reply.http_status}): {_describe(error)}"
    else:
        reason = f"Infobip answered HTTP {reply.http_status}: {_describe(error)}"
    return _Problem(reason, error, transient, reply.retry_after if transient else None)


def _status_of(entry: Mapping[str, Any]) -> Status:
    """The catalogue status of a response entry; PENDING_ACCEPTED when it carries none."""
    raw = entry.get("status")
    # dict, not Mapping: parsed JSON is made of dicts, and this runs once per message.
    if isinstance(raw, dict) and isinstance(raw.get("id"), int):
        group = raw.get("groupId")
        return status_for(raw["id"], group if isinstance(group, int) else None)
    return status.ACCEPTED


def _rejection(entry: Mapping[str, Any], found: Status) -> dict[str, Any]:
    """The error for a destination Infobip refused inside a 2xx answer."""
    raw = entry.get("status")
    said: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    extras = {"action": said["action"]} if said.get("action") else {}
    return provider_error(
        "infobip",
        id=found.id,
        name=said.get("name") or found.name,
        description=said.get("description") or found.description,
        permanent=True,
        raw=dict(said) or None,
        groupId=found.groupId,
        groupName=found.groupName,
        violations=[],
        **extras,
    )


def _accepted(
    message: Outbound, entry: Mapping[str, Any] | None, reply: _Reply, call: ProviderCall
) -> SendOutcome:
    """The outcome for a message in a 2xx answer (accepted, or rejected per destination)."""
    entry = entry or {}
    found = _status_of(entry)
    provider_id = entry.get("messageId")
    # A final status already in the answer (REJECTED, mostly) is a refusal: keep Infobip's words.
    refused = found.is_final and found.groupId != Group.DELIVERED
    error = _rejection(entry, found) if refused else None
    return SendOutcome(
        message_id=message.message_id,
        status=found,
        provider_message_id=str(provider_id) if provider_id is not None else message.message_id,
        error=error,
        raw=entry or reply.body,
        call=call,
    )


def _refused(message: Outbound, problem: _Problem, call: ProviderCall | None) -> SendOutcome:
    """The outcome for a message whose own request failed (retry later, or rejected for good)."""
    if problem.transient:
        return SendOutcome(
            message_id=message.message_id,
            status=status.ACCEPTED,
            error=problem.error,
            call=call,
            transient=True,
            retry_after=problem.retry_after,
        )
    return SendOutcome(
        message_id=message.message_id,
        status=status.REJECTED,
        error=problem.error,
        call=call,
    )


def _entries(body: Any) -> list[Mapping[str, Any]]:
    """The per-message entries of a bulk answer ({"messages": [...]})."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _match(
    message: Outbound,
    entries: list[Mapping[str, Any]],
    index: int,
    by_id: Mapping[str, Mapping[str, Any]] | None = None,
) -> Mapping[str, Any]:
    """The entry for our message: by the messageId we sent, else by position."""
    if by_id is None:
        by_id = {str(entry.get("messageId")): entry for entry in entries}
    found = by_id.get(message.message_id)
    if found is not None:
        return found
    return entries[index] if index < len(entries) else {}


class InfobipProvider:
    """Sends through one Infobip account on a shared httpx client."""

    name = "infobip"
    channels = frozenset({"sms", "whatsapp", "email"})

    def __init__(self, account: InfobipAccount, client: httpx.AsyncClient) -> None:
        self.account = account
        self._client = client
        self._base_url = account.base_url.rstrip("/")
        self._headers = {"Authorization": f"App {account.api_key}", "Accept": "application/json"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        # One shared object: every SMS entry of every request names the same notify URL.
        self._sms_webhooks = (
            {"delivery": {"url": account.notify_url}, "contentType": "application/json"}
            if account.notify_url
            else None
        )

    async def send(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """Send one channel's batch; SMS goes in one request, the others one request each."""
        if not batch:
            return []
        channels = {m.channel for m in batch}
        if len(channels) != 1:
            raise ValueError(f"an Infobip batch holds one channel, got {sorted(channels)}")
        channel = batch[0].channel
        if channel == "sms":
            return await self._send_sms(batch)
        if channel == "whatsapp":
            return await self._each(batch, self._send_whatsapp)
        if channel == "email":
            return await self._each(batch, self._send_email)
        raise PermanentError(f"Infobip cannot send channel {channel!r}")

    def poll_reports(self, conn: Connection) -> list[StatusReport]:
        """Nothing to poll: Infobip posts its reports to our webhook."""
        return []

    async def aclose(self) -> None:
        """The HTTP client is the registry's."""

    async def upsert_person(
        self,
        *,
        external_id: str,
        first_name: str | None,
        last_name: str | None,
        phones: list[str],
        emails: list[str],
    ) -> ProviderCall:
        """Create or overwrite the People profile whose externalId is our identity id."""
        person = _person_body(external_id, first_name, last_name, phones, emails)
        query = {"identifier": external_id, "type": "EXTERNAL_ID"}
        reply = await self._request("PUT", PERSONS_PATH, params=query, json_body=person)
        if reply.http_status == 404:
            reply = await self._request("POST", PERSONS_PATH, json_body=person)
            if reply.http_status == 409:
                # Someone created it between our PUT and POST: overwrite it after all.
                reply = await self._request("PUT", PERSONS_PATH, params=query, json_body=person)
        _raise_for(reply)
        return reply.call

    async def _send_sms(self, batch: Sequence[Outbound]) -> list[SendOutcome]:
        """All the batch's SMS in one request; a refused request raises for the whole batch."""
        body = {"messages": [self._sms_message(m) for m in batch]}
        reply = await self._request("POST", SMS_PATH, json_body=body)
        _raise_for(reply)
        entries = _entries(reply.body)
        by_id = {str(entry.get("messageId")): entry for entry in entries}
        call = reply.call
        return [
            _accepted(m, _match(m, entries, i, by_id), reply, call) for i, m in enumerate(batch)
        ]

    def _sms_message(self, message: Outbound) -> dict[str, Any]:
        """One SMS v3 message entry with our id as the destination's messageId."""
        entry: dict[str, Any] = {
            "destinations": [{"to": message.destination, "messageId": message.message_id}],
            "content": {"text": str(message.content.get("text", ""))},
        }
        sender = message.sender or self.account.sms_sender
        if sender:
            entry["sender"] = sender
        if self._sms_webhooks is not None:
            entry["webhooks"] = self._sms_webhooks
        return entry

    async def _each(
        self,
        batch: Sequence[Outbound],
        send_one: Callable[[Outbound], Awaitable[SendOutcome]],
    ) -> list[SendOutcome]:
        """Send each message on its own request, a bounded number at a time, in input order."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(message: Outbound) -> SendOutcome:
            async with gate:
                return await send_one(message)

        return list(await asyncio.gather(*(bounded(m) for m in batch)))

    async def _send_whatsapp(self, message: Outbound) -> SendOutcome:
        """One WhatsApp message: a template when the content names one, text otherwise."""
        sender = message.sender or self.account.whatsapp_sender
        if not sender:
            return _no_sender(message, "WhatsApp")
        base = {"from": sender, "to": message.destination, "messageId": message.message_id}
        template = message.content.get("template")
        if isinstance(template, Mapping):
            path = WHATSAPP_TEMPLATE_PATH
            body: dict[str, Any] = {"messages": [{**base, "content": _template_content(template)}]}
            target = body["messages"][0]
        else:
            path = WHATSAPP_TEXT_PATH
            body = {**base, "content": {"text": str(message.content.get("text", ""))}}
            target = body
        if self.account.notify_url:
            target["notifyUrl"] = self.account.notify_url
        reply = await self._request("POST", path, json_body=body)
        problem = _problem(reply)
        if problem is not None:
            return _refused(message, problem, reply.call)
        # The text endpoint answers one object; the template endpoint a bulk of them.
        entries = _entries(reply.body) or ([reply.body] if isinstance(reply.body, Mapping) else [])
        return _accepted(message, _match(message, entries, 0), reply, reply.call)

    async def _send_email(self, message: Outbound) -> SendOutcome:
        """One email as Email v3's multipart form, html and text both when we have them."""
        sender = message.sender or self.account.email_sender
        if not sender:
            return _no_sender(message, "email")
        fields: list[tuple[str, str]] = [
            ("from", sender),
            ("to", message.destination),
            ("subject", str(message.content.get("subject", ""))),
        ]
        for part in ("text", "html"):
            value = message.content.get(part)
            if value:
                fields.append((part, str(value)))
        fields.append(("messageId", message.message_id))
        if self.account.notify_url:
            fields.append(("notifyUrl", self.account.notify_url))
            fields.append(("notifyContentType", "application/json"))
        reply = await self._request("POST", EMAIL_PATH, form=fields)
        problem = _problem(reply)
        if problem is not None:
            return _refused(message, problem, reply.call)
        return _accepted(message, _match(message, _entries(reply.body), 0), reply, reply.call)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: list[tuple[str, str]] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One call to Infobip; a timeout or a broken connection is a reply without status."""
        # (None, value) parts make httpx send multipart/form-data without any file.
        files = [(name, (None, value)) for name, value in form] if form is not None else None
        # msgspec encodes a thousand-message SMS body several times faster than json.dumps.
        content = msgspec.json.encode(json_body) if json_body is not None else None
        headers = self._json_headers if content is not None else self._headers
        started = time.perf_counter()
        try:
            response = await self._client.request(
                method,
                self._base_url + path,
                headers=headers,
                content=content,
                files=files,
                params=params,
            )
        except UrlNotAllowed as exc:
            return _Reply(None, "", None, None, 0.0, failure=str(exc), refused=True)
        except httpx.TransportError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
            failure = f"{kind} ({type(exc).__name__}): {exc}".rstrip(": ")
            return _Reply(None, "", None, None, elapsed, failure)
        elapsed = (time.perf_counter() - started) * 1000
        return _Reply(
            response.status_code,
            response.text,
            _json_or_none(response.content),
            parse_retry_after(response.headers.get("Retry-After")),
            elapsed,
        )


def _json_or_none(content: bytes) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        return None


def _raise_for(reply: _Reply) -> None:
    """Raise TransientError or PermanentError for a request that did not go through."""
    problem = _problem(reply)
    if problem is None:
        return
    if problem.transient:
        raise TransientError(
            problem.reason, retry_after=problem.retry_after, error=problem.error, call=reply.call
        )
    raise PermanentError(problem.reason, error=problem.error, call=reply.call)


def _template_content(template: Mapping[str, Any]) -> dict[str, Any]:
    """Our template reference as Infobip's WhatsApp template content."""
    placeholders = template.get("placeholders") or []
    return {
        "templateName": str(template.get("name", "")),
        "templateData": {"body": {"placeholders": [str(p) for p in placeholders]}},
        "language": str(template.get("language", "")),
    }


def _no_sender(message: Outbound, channel: str) -> SendOutcome:
    """A message we cannot send because neither it nor the account names a sender."""
    error = provider_error(
        "infobip",
        id="NO_SENDER",
        name="NO_SENDER",
        description=f"No {channel} sender configured for this Infobip account",
        permanent=True,
        violations=[],
    )
    return SendOutcome(message.message_id, status.REJECTED_SOURCE, error=error)


def _person_body(
    external_id: str,
    first_name: str | None,
    last_name: str | None,
    phones: list[str],
    emails: list[str],
) -> dict[str, Any]:
    """A People API person with our identity id as its externalId."""
    person: dict[str, Any] = {"externalId": external_id}
    if first_name:
        person["firstName"] = first_name
    if last_name:
        person["lastName"] = last_name
    # People wants international numbers without '+'; dict.fromkeys keeps order, drops repeats.
    numbers = dict.fromkeys(p.lstrip("+") for p in phones if p)
    addresses = dict.fromkeys(e for e in emails if e)
    person["contactInformation"] = {
        "phone": [{"number": n} for n in numbers],
        "email": [{"address": a} for a in addresses],
    }
    return person
