"""A fake Twilio Programmable Messaging API that speaks its wire formats, strictly, on 127.0.0.1.

Served: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP basic auth
(the Account SID and auth token). Answers as Twilio does: 201 with the Message resource, or
Twilio's error body `{"code", "message", "more_info", "status"}`:

| what                                               | HTTP | code  |
|----------------------------------------------------|------|-------|
| no or wrong basic auth                             | 401  | 20003 |
| another account's path                             | 404  | 20404 |
| a parameter the Messages API does not take         | 400  | 21000 (this fake's strictness) |
| no `To`                                            | 400  | 21604 |
| neither `From` nor `MessagingServiceSid`           | 400  | 21603 |
| no `Body` (nor `ContentSid`)                       | 400  | 21602 |
| `To` not E.164 (`+` and digits, `whatsapp:` for WhatsApp) | 400 | 21211 |
| `To` and `From` on different channels              | 400  | 21910 |
| a destination marked with `reject_destination`     | 400  | its code (21211 by default) |

Accepted messages get status callbacks, signed with the official `twilio` package's
`RequestValidator` (X-Twilio-Signature), POSTed form-encoded to the `StatusCallback` URL:
`sent` then `delivered`, or `sent` then `undelivered` with an `ErrorCode` for a destination
marked with `undeliverable`. Failures are injected with `fail_next` (a status in Twilio's
error format) and `drop_next` (the connection closes without an answer).
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Self
from urllib.parse import parse_qsl

import httpx
from twilio.request_validator import RequestValidator

from tests.fakes.infobip import (
    Receive,
    Scope,
    Send,
    _BackgroundServer,
    _drop,
    _read_request,
    _respond,
    _Response,
)

API_VERSION = "2010-04-01"
PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
FIELDS = frozenset(
    {
        "To",
        "From",
        "MessagingServiceSid",
        "Body",
        "StatusCallback",
        "ContentSid",
        "ContentVariables",
        "MediaUrl",
        "ValidityPeriod",
    }
)
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service Unavailable",
    21000: "Unknown parameter: {name}",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21910: "Invalid From and To pair. From and To should be of the same channel",
}
CODES_BY_STATUS = {429: 20429, 500: 20500, 502: 20500, 503: 20503, 504: 20503}


def error_body(http_status: int, code: int, **values: str) -> dict[str, Any]:
    """Twilio's error format."""
    message = MESSAGES.get(code, "Error").format(**values) if values else MESSAGES.get(code, "")
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": http_status,
    }


@dataclass(frozen=True)
class SentMessage:
    """One message Twilio accepted."""

    sid: str
    to: str
    sender: str
    body: str | None
    form: dict[str, str]


@dataclass(frozen=True)
class PostedCallback:
    """A status callback the fake made, and the receiver's answer."""

    url: str
    params: dict[str, str]
    signature: str
    http_status: int | None


@dataclass
class _Failure:
    http_status: int
    retry_after: str | None = None


@dataclass
class _State:
    received: list[dict[str, Any]] = field(default_factory=list)
    messages: list[SentMessage] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    callbacks: list[PostedCallback] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    drops: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    undeliverable: dict[str, int] = field(default_factory=dict)


class FakeTwilio:
    """Twilio on a loopback port, with failure injection and inspection for tests."""

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-auth-token",
        report_delay: float = 0.05,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.report_delay = report_delay
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server = _BackgroundServer(self, "127.0.0.1", 0)
        self.state = _State()

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # controls

    def reset(self) -> None:
        """Forget everything received and injected (pending callbacks are cancelled)."""
        with self._lock:
            for task in list(self._tasks):
                task.get_loop().call_soon_threadsafe(task.cancel)
            self.state = _State()

    def fail_next(self, n: int = 1, *, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next n requests with this status, in Twilio's error format."""
        with self._lock:
            self.state.failures += [_Failure(status, retry_after) for _ in range(n)]

    def drop_next(self, n: int = 1) -> None:
        """Close the next n connections without an answer (nothing is sent)."""
        with self._lock:
            self.state.drops += n

    def reject_destination(self, number: str, code: int = 21211) -> None:
        """Refuse this `To` (E.164, with `whatsapp:` for WhatsApp) with a 400 and this code."""
        with self._lock:
            self.state.rejected[number] = code

    def undeliverable(self, number: str, code: int = 30003) -> None:
        """Accept messages to this `To`, then report them undelivered with this ErrorCode."""
        with self._lock:
            self.state.undeliverable[number] = code

    # inspection

    @property
    def messages(self) -> list[SentMessage]:
        return list(self.state.messages)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.state.received)

    def wait_for_callbacks(self, count: int, timeout: float = 5.0) -> list[PostedCallback]:
        deadline = time.monotonic() + timeout
        while len(self.state.callbacks) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.state.callbacks)

    # ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = await _read_request(scope, receive)
        form = dict(parse_qsl(request.raw.decode(), keep_blank_values=True))
        with self._lock:
            self.state.received.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "headers": request.headers,
                    "form": form,
                }
            )
            drop = self.state.drops > 0
            if drop:
                self.state.drops -= 1
        if drop:
            await _drop(send, receive)
            return
        await _respond(send, self._handle(request.method, request.path, request.headers, form))

    def _handle(
        self, method: str, path: str, headers: dict[str, str], form: dict[str, str]
    ) -> _Response:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return _Response(401, error_body(401, 20003))
        match = PATH.match(path)
        if method != "POST" or match is None or match["sid"] != self.account_sid:
            return _Response(404, error_body(404, 20404, path=path))
        with self._lock:
            failure = self.state.failures.pop(0) if self.state.failures else None
        if failure is not None:
            code = CODES_BY_STATUS.get(failure.http_status, 20500)
            extra = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return _Response(failure.http_status, error_body(failure.http_status, code), extra)
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _Response(400, error_body(400, 21000, name="(not form-encoded)"))
        return self._create(form)

    def _create(self, form: dict[str, str]) -> _Response:
        refused = self._refusal(form)
        if refused is not None:
            return refused
        to = form["To"]
        sender = form.get("From") or form["MessagingServiceSid"]
        sid = "SM" + uuid.uuid4().hex
        message = SentMessage(sid, to, sender, form.get("Body"), dict(form))
        with self._lock:
            self.state.messages.append(message)
            self.state.bodies[form.get("Body") or ""] += 1
        status = "accepted" if "MessagingServiceSid" in form and "From" not in form else "queued"
        url = form.get("StatusCallback")
        if url:
            self._later(self._callbacks(url, message))
        return _Response(201, self._resource(message, status))

    def _refusal(self, form: dict[str, str]) -> _Response | None:
        unknown = sorted(set(form) - FIELDS)
        if unknown:
            return _Response(400, error_body(400, 21000, name=unknown[0]))
        to = form.get("To")
        if not to:
            return _Response(400, error_body(400, 21604))
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return _Response(400, error_body(400, 21603))
        if not (form.get("Body") or form.get("ContentSid")):
            return _Response(400, error_body(400, 21602))
        whatsapp = to.startswith("whatsapp:")
        if not E164.match(to.removeprefix("whatsapp:")):
            return _Response(400, error_body(400, 21211, to=to))
        sender = form.get("From")
        if sender is not None and sender.startswith("whatsapp:") != whatsapp:
            return _Response(400, error_body(400, 21910))
        code = self.state.rejected.get(to)
        if code is not None:
            return _Response(400, error_body(400, code, to=to))
        return None

    def _resource(self, message: SentMessage, status: str) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC), usegmt=True)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": message.form.get("From"),
            "messaging_service_sid": message.form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": status,
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": message.to,
            "uri": f"{uri}.json",
        }

    # status callbacks

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _callbacks(self, url: str, message: SentMessage) -> None:
        error_code = self.state.undeliverable.get(message.to)
        final = "undelivered" if error_code else "delivered"
        for status in ("sent", final):
            await asyncio.sleep(self.report_delay)
            params = self.callback_params(message, status, error_code if status == final else None)
            await self.post_callback(url, params)

    def callback_params(
        self, message: SentMessage, status: str, error_code: int | None = None
    ) -> dict[str, str]:
        """The form parameters Twilio posts for a status change."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": message.form.get("From") or "",
            "To": message.to,
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if message.form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = message.form["MessagingServiceSid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    def sign(self, url: str, params: dict[str, str]) -> str:
        """The X-Twilio-Signature, computed by the official package."""
        return str(RequestValidator(self.auth_token).compute_signature(url, params))

    async def post_callback(self, url: str, params: dict[str, str]) -> None:
        signature = self.sign(url, params)
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.post(
                    url, data=params, headers={"X-Twilio-Signature": signature}
                )
            status: int | None = answer.status_code
        except httpx.HTTPError:
            status = None
        self.state.callbacks.append(PostedCallback(url, params, signature, status))
