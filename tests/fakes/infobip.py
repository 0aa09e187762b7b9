"""A fake Infobip that speaks its documented wire formats, strictly, on 127.0.0.1.

APIs served (auth: `Authorization: App <api key>` only):

| API      | path                                                     | errors in            |
|----------|----------------------------------------------------------|----------------------|
| SMS v3   | POST /sms/3/messages (JSON, checked by SmsRequest)       | errorCode/violations |
| WhatsApp | POST /whatsapp/1/message/text, /whatsapp/1/message/template | requestError     |
| Email v3 | POST /email/3/send (multipart/form-data)                 | requestError         |
| People   | POST, PUT, GET /people/2/persons                         | errorCode/violations |

SmsRequest is Infobip's published model (`infobip_api_client`); requestError is
`{"requestError": {"serviceException": {messageId, text, validationErrors}}}`.

Accepted messages are answered like Infobip (our messageId echoed, a PENDING status) and,
`report_delay` seconds later, a delivery report (DELIVERED_TO_HANDSET) is POSTed to the
notify URL the request named. Destinations marked with `reject_destination` are refused:
REJECTED_DESTINATION inside the SMS answer, HTTP 400 for WhatsApp and email; they get no report.

Failures are injected at runtime: `fail_next`, `delay_next` (the request is processed, the
answer is late), `drop_next` (the connection closes without an answer). Unknown fields are
refused too, so a typo in our request bodies fails a test instead of being ignored.

In-process: `with FakeInfobip(api_key="k") as fake: ... fake.base_url ... fake.sms_messages`.
Other processes: `python -m tests.fakes.infobip --port P --api-key K`; the same controls and
state are then under `/__fake/...` (see `_control`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import importlib.util
import socket
import ssl
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qsl

import httpx
import msgspec
import pydantic
import uvicorn


def _load_infobip_models(*names: str) -> types.SimpleNamespace:
    """Infobip's published request/response models, loaded without the client's 5 s import."""
    # infobip_api_client/__init__.py imports all ~800 models and every API class (~5 s);
    # stand-in parent packages let us load just the few model modules we check against.
    # The stand-ins are removed afterwards, so a later `import infobip_api_client` is the
    # real one (and reuses these modules).
    spec = importlib.util.find_spec("infobip_api_client")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("infobip-api-python-client is not installed (pip install -e '.[dev]')")
    root = next(iter(spec.submodule_search_locations))
    stand_ins = {"infobip_api_client": root, "infobip_api_client.models": f"{root}/models"}
    added = []
    for name, path in stand_ins.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
            added.append(name)
    try:
        found = {}
        for module_name, class_name in (n.split(":") for n in names):
            module = importlib.import_module(f"infobip_api_client.models.{module_name}")
            found[class_name] = getattr(module, class_name)
    finally:
        for name in added:
            del sys.modules[name]
    return types.SimpleNamespace(**found)


infobip_models = _load_infobip_models(
    "sms_request:SmsRequest",
    "sms_response:SmsResponse",
    "sms_delivery_result:SmsDeliveryResult",
    "api_error:ApiError",
    "api_exception:ApiException",
    "email_send_response:EmailSendResponse",
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LEGACY = "legacy"  # {"requestError": {"serviceException": {...}}}
API_ERROR = "api_error"  # {"errorCode", "description", "action", "violations", "resources"}

PENDING_ACCEPTED = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}
PENDING_ENROUTE = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 7,
    "name": "PENDING_ENROUTE",
    "description": "Message sent to next instance",
}
REJECTED_DESTINATION = {
    "groupId": 5,
    "groupName": "REJECTED",
    "id": 14,
    "name": "REJECTED_DESTINATION",
    "description": "Destination rejected",
    "action": "Check the destination address.",
}
DELIVERED_TO_HANDSET = {
    "groupId": 3,
    "groupName": "DELIVERED",
    "id": 5,
    "name": "DELIVERED_TO_HANDSET",
    "description": "Message delivered to handset",
}
NO_ERROR = {
    "groupId": 0,
    "groupName": "OK",
    "id": 0,
    "name": "NO_ERROR",
    "description": "No Error",
    "permanent": False,
}

# (legacy messageId, legacy text, errorCode, description, action) per HTTP status.
_ERRORS: dict[int, tuple[str, str, str, str, str]] = {
    400: (
        "BAD_REQUEST",
        "Bad request",
        "E400",
        "Request cannot be processed.",
        "Check the syntax, violations and adjust the request.",
    ),
    401: (
        "UNAUTHORIZED",
        "Invalid login details",
        "E401",
        "Authentication failed.",
        "Check the credentials (Authorization: App <API key>).",
    ),
    403: (
        "FORBIDDEN",
        "Forbidden",
        "E403",
        "Access forbidden.",
        "Check the API key's scopes.",
    ),
    404: ("NOT_FOUND", "Not found", "E404", "Resource not found.", "Check the request URL."),
    405: (
        "METHOD_NOT_ALLOWED",
        "Method not allowed",
        "E405",
        "Method not allowed.",
        "Check the request method.",
    ),
    409: ("CONFLICT", "Conflict", "E409", "Resource already exists.", "Update it instead."),
    429: (
        "TOO_MANY_REQUESTS",
        "Too many requests",
        "E429",
        "Too many requests.",
        "Slow down and retry later.",
    ),
    500: (
        "GENERAL_ERROR",
        "Something went wrong. Please contact support.",
        "E500",
        "Something went wrong.",
        "Contact support.",
    ),
}
_RESOURCES = [{"name": "API documentation", "url": "https://www.infobip.com/docs/api"}]


def error_body(
    http_status: int,
    error_format: str,
    *,
    text: str | None = None,
    violations: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Infobip's error body for a status, in the given format."""
    phrase = HTTPStatus(http_status).phrase
    legacy_id, legacy_text, code, description, action = _ERRORS.get(
        http_status,
        (phrase.upper().replace(" ", "_"), phrase, f"E{http_status}", phrase + ".", "Retry."),
    )
    pairs = list(violations)
    if error_format == LEGACY:
        exception: dict[str, Any] = {"messageId": legacy_id, "text": text or legacy_text}
        if pairs:
            grouped: dict[str, list[str]] = {}
            for prop, violation in pairs:
                grouped.setdefault(prop, []).append(violation)
            exception["validationErrors"] = grouped
        return {"requestError": {"serviceException": exception}}
    return {
        "errorCode": code,
        "description": text or description,
        "action": action,
        "violations": [{"property": p, "violation": v} for p, v in pairs],
        "resources": _RESOURCES,
    }


def infobip_time(moment: datetime | None = None) -> str:
    """Infobip's timestamp format, yyyy-MM-dd'T'HH:mm:ss.SSSZ."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


# --- request-shape checking -------------------------------------------------------------
# A spec maps each allowed property to (required, kind); kind is a type, a nested spec,
# or a one-item list holding the kind of the list's items.
Spec = dict[str, tuple[bool, Any]]

WHATSAPP_TEXT: Spec = {
    "from": (True, str),
    "to": (True, str),
    "messageId": (False, str),
    "content": (True, {"text": (True, str), "previewUrl": (False, bool)}),
    "callbackData": (False, str),
    "notifyUrl": (False, str),
    "urlOptions": (False, dict),
    "entityId": (False, str),
    "applicationId": (False, str),
}
WHATSAPP_TEMPLATE_MESSAGE: Spec = {
    "from": (True, str),
    "to": (True, str),
    "messageId": (False, str),
    "content": (
        True,
        {
            "templateName": (True, str),
            "templateData": (
                True,
                {
                    "body": (True, {"placeholders": (True, [str])}),
                    "header": (False, dict),
                    "buttons": (False, list),
                    "carousel": (False, dict),
                    "limitedTimeOffer": (False, dict),
                },
            ),
            "language": (True, str),
        },
    ),
    "callbackData": (False, str),
    "notifyUrl": (False, str),
    "urlOptions": (False, dict),
    "smsFailover": (False, dict),
    "entityId": (False, str),
    "applicationId": (False, str),
}
WHATSAPP_TEMPLATE: Spec = {
    "messages": (True, [WHATSAPP_TEMPLATE_MESSAGE]),
    "bulkId": (False, str),
}
PERSON: Spec = {
    "externalId": (False, str),
    "firstName": (False, str),
    "lastName": (False, str),
    "middleName": (False, str),
    "address": (False, str),
    "city": (False, str),
    "country": (False, str),
    "gender": (False, str),
    "birthDate": (False, str),
    "preferredLanguage": (False, str),
    "profilePicture": (False, str),
    "type": (False, str),
    "tags": (False, [str]),
    "customAttributes": (False, dict),
    "contactInformation": (
        False,
        {
            "phone": (False, [{"number": (True, str)}]),
            "email": (False, [{"address": (True, str)}]),
        },
    ),
}
# The fields Email v3's send accepts (its documented form parameters).
_EMAIL_FIELD_LINES = (
    "from to cc bcc subject text html ampHtml templateId attachment inlineImage",
    "intermediateReport notifyUrl notifyContentType callbackData track trackClicks trackOpens",
    "trackingPixelPosition trackingUrl bulkId messageId campaignReferenceId replyTo",
    "defaultPlaceholders preserveRecipients sendAt landingPagePlaceholders landingPageId",
    "templateLanguageVersion clientPriority applicationId entityId headers ipPoolId",
)
EMAIL_FIELDS = frozenset(name for line in _EMAIL_FIELD_LINES for name in line.split())


def check(value: Any, kind: Any, path: str = "") -> list[tuple[str, str]]:
    """Violations of a value against a spec kind, as (property path, violation) pairs."""
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return [(path or "body", "must be an object")]
        found: list[tuple[str, str]] = []
        for key in value:
            if key not in kind:
                found.append((_join(path, key), "unknown property"))
        for key, (required, sub) in kind.items():
            if key not in value or value[key] is None:
                if required:
                    found.append((_join(path, key), "must not be null"))
                continue
            found += check(value[key], sub, _join(path, key))
        return found
    if isinstance(kind, list):
        if not isinstance(value, list):
            return [(path, "must be an array")]
        return [v for i, item in enumerate(value) for v in check(item, kind[0], f"{path}[{i}]")]
    if not isinstance(value, kind):
        return [(path, f"must be a {kind.__name__}")]
    return []


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _extra_fields(sent: Any, known: Any, path: str = "") -> list[tuple[str, str]]:
    """Fields we sent that a model round trip dropped: properties the API does not know."""
    if isinstance(sent, dict) and isinstance(known, dict):
        found = []
        for key, value in sent.items():
            if key not in known:
                found.append((_join(path, key), "unknown property"))
            else:
                found += _extra_fields(value, known[key], _join(path, key))
        return found
    if isinstance(sent, list) and isinstance(known, list):
        pairs = zip(sent, known, strict=False)
        return [v for i, (s, k) in enumerate(pairs) for v in _extra_fields(s, k, f"{path}[{i}]")]
    return []


MODEL_SAMPLE = 25


def check_sms_request(body: Any) -> list[tuple[str, str]]:
    """Violations of an SMS v3 body against Infobip's published SmsRequest model."""
    if not isinstance(body, dict):
        return [("body", "must be an object")]
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > MODEL_SAMPLE:
        # Every message of a request is built by the same code: Infobip's model checks a
        # sample (it costs milliseconds per message), the rest get the structural checks below.
        body = {**body, "messages": messages[:MODEL_SAMPLE]}
        rest = [
            (f"messages[{i}].destinations", "must not be empty")
            for i, m in enumerate(messages)
            if not (isinstance(m, dict) and m.get("destinations"))
        ]
        return check_sms_request(body) + rest
    try:
        model = infobip_models.SmsRequest.from_dict(body)
    except pydantic.ValidationError as exc:
        return [(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
    if model is None or not model.messages:
        return [("messages", "must not be empty")]
    found = _extra_fields(body, model.to_dict())
    for i, message in enumerate(body["messages"]):
        if not message.get("destinations"):
            found.append((f"messages[{i}].destinations", "must not be empty"))
    return found


# --- what the fake records --------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class SentMessage:
    """One message (one destination) Infobip accepted or rejected."""

    channel: str
    message_id: str
    to: str
    sender: str | None
    text: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    rejected: bool = False


@dataclass(frozen=True)
class PostedReport:
    """A delivery-report POST the fake made: where, what, and the receiver's answer."""

    url: str
    payload: dict[str, Any]
    http_status: int | None
    failure: str | None = None


@dataclass(frozen=True)
class _Failure:
    http_status: int
    retry_after: float | str | None
    error_format: str | None


@dataclass
class _Response:
    http_status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    body: Any = None


@dataclass
class _Route:
    family: str  # which error format the API speaks
    handlers: dict[str, Callable[[_Request], _Response]]


# --- the fake ---------------------------------------------------------------------------


class FakeInfobip:
    """Infobip on a loopback port, with failure injection and inspection for tests."""

    def __init__(
        self,
        *,
        api_key: str = "test-api-key",
        host: str = "127.0.0.1",
        port: int = 0,
        report_delay: float = 0.05,
    ) -> None:
        self.api_key = api_key
        self.report_delay = report_delay
        self._lock = threading.Lock()
        self._report_tasks: set[asyncio.Task[None]] = set()
        self._server = _BackgroundServer(self, host, port)
        self._routes: dict[str, _Route] = {
            "/sms/3/messages": _Route(API_ERROR, {"POST": self._sms}),
            "/whatsapp/1/message/text": _Route(LEGACY, {"POST": self._whatsapp_text}),
            "/whatsapp/1/message/template": _Route(LEGACY, {"POST": self._whatsapp_template}),
            "/email/3/send": _Route(LEGACY, {"POST": self._email}),
            "/people/2/persons": _Route(
                API_ERROR,
                {"POST": self._create_person, "PUT": self._update_person, "GET": self._get_person},
            ),
        }
        self.reset()

    # lifecycle

    @property
    def base_url(self) -> str:
        """Where the fake listens, e.g. http://127.0.0.1:54321."""
        return self._server.base_url

    def start(self) -> Self:
        """Serve in a background thread; returns once the port accepts connections."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving (pending delivery reports are dropped)."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # failure injection (callable from any thread)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after: float | str | None = None,
        error_format: str | None = None,
    ) -> None:
        """Answer the next n requests with this HTTP status (Retry-After when given)."""
        with self._lock:
            self._failures += [_Failure(status, retry_after, error_format)] * n

    def delay_next(self, n: int = 1, seconds: float = 1.0) -> None:
        """Process the next n requests normally but answer them `seconds` late."""
        with self._lock:
            self._delays += [seconds] * n

    def drop_next(self, n: int = 1, *, after_processing: bool = False) -> None:
        """Close the next n connections without an answer (optionally after accepting)."""
        with self._lock:
            self._drops += [after_processing] * n

    def reject_destination(self, destination: str) -> None:
        """Refuse this phone number or email address from now on."""
        with self._lock:
            self._rejected.add(destination)

    def reset(self) -> None:
        """Forget everything received and every injected failure."""
        with self._lock:
            # Reports still waiting would land in the next test's lists: cancel them.
            for task in list(self._report_tasks):
                task.get_loop().call_soon_threadsafe(task.cancel)
            self.received: list[Received] = []
            self.messages: list[SentMessage] = []
            self.message_counts: Counter[str] = Counter()
            self.persons: dict[str, dict[str, Any]] = {}
            self.reports: list[PostedReport] = []
            self._failures: list[_Failure] = []
            self._delays: list[float] = []
            self._drops: list[bool] = []
            self._rejected: set[str] = set()

    # inspection

    @property
    def sms_messages(self) -> list[SentMessage]:
        """Every SMS destination received, in order."""
        return [m for m in self.messages if m.channel == "sms"]

    @property
    def whatsapp_messages(self) -> list[SentMessage]:
        """Every WhatsApp message received, in order."""
        return [m for m in self.messages if m.channel == "whatsapp"]

    @property
    def emails(self) -> list[SentMessage]:
        """Every email recipient received, in order."""
        return [m for m in self.messages if m.channel == "email"]

    def duplicates(self) -> dict[str, int]:
        """messageIds received more than once, with how often."""
        return {mid: n for mid, n in self.message_counts.items() if n > 1}

    def wait_for_reports(
        self, count: int, *, url: str | None = None, timeout: float = 5.0
    ) -> list[PostedReport]:
        """Block until `count` report POSTs (to `url`, if given) were answered, or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.reports if url is None or r.url == url]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def requests_to(self, path: str) -> list[Received]:
        """The requests received on one path."""
        return [r for r in self.received if r.path == path]

    def summary(self) -> dict[str, Any]:
        """Counts only (for /__fake/summary): cheap even after tens of thousands of messages."""
        return {
            "requests": len(self.received),
            "messages": len(self.messages),
            "unique_messages": len(self.message_counts),
            "duplicates": self.duplicates(),
            "reports": len(self.reports),
        }

    def state(self) -> dict[str, Any]:
        """Everything inspectable, as JSON-ready data (for /__fake/state)."""
        return {
            "received": [asdict(r) for r in self.received],
            "messages": [asdict(m) for m in self.messages],
            "duplicates": self.duplicates(),
            "persons": self.persons,
            "reports": [asdict(r) for r in self.reports],
        }

    # ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http":
            return
        request = await _read_request(scope, receive)
        if request.path.startswith("/__fake/"):
            await _respond(send, self._control(request))
            return
        # Every request is recorded, even one whose connection is then dropped unanswered.
        request.body = _parse_body(request)
        self.received.append(
            Received(request.method, request.path, request.query, request.headers, request.body)
        )
        drop = self._take(self._drops)
        if drop is not None and not drop:
            await _drop(send, receive)
            return
        response = self._handle(request)
        if drop:
            await _drop(send, receive)
            return
        delay = self._take(self._delays)
        if delay and await _client_left_within(delay, receive):
            return
        await _respond(send, response)

    def _take(self, queue: list[Any]) -> Any:
        """Pop the next injected behaviour, if any."""
        with self._lock:
            return queue.pop(0) if queue else None

    def _handle(self, request: _Request) -> _Response:
        """Route, authenticate and answer one Infobip API request."""
        route = self._routes.get(request.path)
        family = route.family if route else LEGACY
        if route is None:
            return _Response(404, error_body(404, LEGACY, text=f"Unknown path {request.path}"))
        if request.headers.get("authorization") != f"App {self.api_key}":
            return _Response(401, error_body(401, family))
        failure = self._take(self._failures)
        if failure is not None:
            return _failure_response(failure, family)
        handler = route.handlers.get(request.method)
        if handler is None:
            return _Response(405, error_body(405, family))
        return handler(request)

    # SMS

    def _sms(self, request: _Request) -> _Response:
        violations = check_sms_request(request.body)
        if violations:
            return _Response(400, error_body(400, API_ERROR, violations=violations))
        bulk_id, sent_at = str(uuid.uuid4()), infobip_time()
        answers, reports = [], []
        for message in request.body["messages"]:
            url = (message.get("webhooks") or {}).get("delivery", {}).get("url")
            for destination in message["destinations"]:
                answer, report = self._take_sms(message, destination, bulk_id, sent_at)
                answers.append(answer)
                if report is not None and url:
                    reports.append((url, report))
        self._post_reports(reports)
        return _Response(200, {"bulkId": bulk_id, "messages": answers})

    def _take_sms(
        self, message: dict[str, Any], destination: dict[str, Any], bulk_id: str, sent_at: str
    ) -> tuple[dict[str, Any], _Report | None]:
        """Accept (or reject) one SMS destination; its answer entry and its future report."""
        to = destination["to"]
        message_id = destination.get("messageId") or str(uuid.uuid4())
        rejected = to in self._rejected
        sender = message.get("sender")
        self._record("sms", message_id, to, sender, message["content"].get("text"), rejected)
        answer = {
            "messageId": message_id,
            "status": REJECTED_DESTINATION if rejected else PENDING_ACCEPTED,
            "destination": to,
            "details": {"messageCount": 1},
        }
        report = None if rejected else _Report(bulk_id, message_id, to, sent_at, sender=sender)
        return answer, report

    # WhatsApp

    def _whatsapp_text(self, request: _Request) -> _Response:
        violations = check(request.body, WHATSAPP_TEXT)
        if violations:
            return _Response(400, error_body(400, LEGACY, violations=violations))
        message = request.body
        if message["to"] in self._rejected:
            return _rejected_response(message["to"])
        answer, report = self._take_whatsapp(message, None)
        self._post_reports([(message["notifyUrl"], report)] if message.get("notifyUrl") else [])
        return _Response(200, answer)

    def _whatsapp_template(self, request: _Request) -> _Response:
        violations = check(request.body, WHATSAPP_TEMPLATE)
        if violations:
            return _Response(400, error_body(400, LEGACY, violations=violations))
        messages = request.body["messages"]
        for message in messages:
            if message["to"] in self._rejected:
                return _rejected_response(message["to"])
        bulk_id = request.body.get("bulkId") or str(uuid.uuid4())
        answers, reports = [], []
        for message in messages:
            answer, report = self._take_whatsapp(message, bulk_id)
            answers.append(answer)
            if message.get("notifyUrl"):
                reports.append((message["notifyUrl"], report))
        self._post_reports(reports)
        return _Response(200, {"messages": answers, "bulkId": bulk_id})

    def _take_whatsapp(
        self, message: dict[str, Any], bulk_id: str | None
    ) -> tuple[dict[str, Any], _Report]:
        """Accept one WhatsApp message; its answer and its future report."""
        message_id = message.get("messageId") or str(uuid.uuid4())
        content = message["content"]
        extra = {k: v for k, v in content.items() if k != "text"}
        self._record(
            "whatsapp", message_id, message["to"], message["from"], content.get("text"), **extra
        )
        answer = {
            "to": message["to"],
            "messageCount": 1,
            "messageId": message_id,
            "status": PENDING_ENROUTE,
        }
        report = _Report(bulk_id, message_id, message["to"], infobip_time(), channel="WHATSAPP")
        return answer, report

    # Email

    def _email(self, request: _Request) -> _Response:
        form = request.body
        if not isinstance(form, dict):
            text = "Request must be multipart/form-data"
            return _Response(400, error_body(400, LEGACY, text=text))
        violations = _email_violations(form)
        if violations:
            return _Response(400, error_body(400, LEGACY, violations=violations))
        recipients = _as_list(form["to"])
        for to in recipients:
            if to in self._rejected:
                return _rejected_response(to)
        bulk_id = _first(form.get("bulkId")) or str(uuid.uuid4())
        answers, reports = [], []
        for i, to in enumerate(recipients):
            given = _first(form.get("messageId")) if i == 0 else None
            message_id = given or str(uuid.uuid4())
            extra = {k: _first(form.get(k)) for k in ("subject", "html") if form.get(k)}
            self._record(
                "email", message_id, to, _first(form["from"]), _first(form.get("text")), **extra
            )
            answers.append(
                {"to": to, "messageCount": 1, "messageId": message_id, "status": PENDING_ACCEPTED}
            )
            if form.get("notifyUrl"):
                report = _Report(bulk_id, message_id, to, infobip_time(), channel="EMAIL")
                reports.append((_first(form["notifyUrl"]), report))
        self._post_reports(reports)
        return _Response(200, {"bulkId": bulk_id, "messages": answers})

    # People

    def _create_person(self, request: _Request) -> _Response:
        violations = check(request.body, PERSON)
        if violations:
            return _Response(400, error_body(400, API_ERROR, violations=violations))
        external_id = request.body.get("externalId")
        if external_id in self.persons:
            text = f"Person with externalId {external_id} already exists."
            return _Response(409, error_body(409, API_ERROR, text=text))
        person = self._store_person(request.body, created=True)
        return _Response(200, person)

    def _update_person(self, request: _Request) -> _Response:
        found = self._identified(request)
        if isinstance(found, _Response):
            return found
        violations = check(request.body, PERSON)
        if violations:
            return _Response(400, error_body(400, API_ERROR, violations=violations))
        body = {**request.body, "externalId": found}
        return _Response(200, self._store_person(body, created=False))

    def _get_person(self, request: _Request) -> _Response:
        found = self._identified(request)
        return found if isinstance(found, _Response) else _Response(200, self.persons[found])

    def _identified(self, request: _Request) -> str | _Response:
        """The externalId named by ?identifier=&type=EXTERNAL_ID, or the error answer."""
        identifier, kind = request.query.get("identifier"), request.query.get("type")
        if not identifier or kind != "EXTERNAL_ID":
            pairs = [("identifier", "must not be blank"), ("type", "fake supports EXTERNAL_ID")]
            return _Response(400, error_body(400, API_ERROR, violations=pairs))
        if identifier not in self.persons:
            text = f"Person with externalId {identifier} not found."
            return _Response(404, error_body(404, API_ERROR, text=text))
        return identifier

    def _store_person(self, body: dict[str, Any], *, created: bool) -> dict[str, Any]:
        """Keep a person the way People answers it: with ids and timestamps."""
        now = infobip_time()
        previous = self.persons.get(body.get("externalId") or "")
        person = {
            "id": previous["id"] if previous else uuid.uuid4().int % 10**15,
            "type": "CUSTOMER",
            "createdAt": previous["createdAt"] if previous and not created else now,
            "modifiedAt": now,
            "tags": [],
            "customAttributes": {},
            **body,
        }
        self.persons[body.get("externalId") or str(person["id"])] = person
        return person

    # bookkeeping

    def _record(
        self,
        channel: str,
        message_id: str,
        to: str,
        sender: str | None,
        text: str | None,
        rejected: bool = False,
        **extra: Any,
    ) -> None:
        self.messages.append(SentMessage(channel, message_id, to, sender, text, extra, rejected))
        self.message_counts[message_id] += 1

    def _post_reports(self, reports: list[tuple[str, _Report]]) -> None:
        """Later, POST the reports, one request per notify URL, like Infobip's webhooks."""
        by_url: dict[str, list[_Report]] = {}
        for url, report in reports:
            by_url.setdefault(url, []).append(report)
        for url, results in by_url.items():
            task = asyncio.get_running_loop().create_task(self._deliver(url, results))
            self._report_tasks.add(task)
            task.add_done_callback(self._report_tasks.discard)

    async def _deliver(self, url: str, results: list[_Report]) -> None:
        await asyncio.sleep(self.report_delay)
        now = infobip_time()
        payload = {"results": [r.entry(now) for r in results]}
        try:
            async with httpx.AsyncClient(timeout=5, verify=_tls_context()) as client:
                answer = await client.post(url, json=payload)
            self.reports.append(PostedReport(url, payload, answer.status_code))
        except httpx.HTTPError as exc:
            self.reports.append(PostedReport(url, payload, None, repr(exc)))

    # controls for other processes

    def _control(self, request: _Request) -> _Response:
        """/__fake/state, /__fake/reset and the injections, as JSON endpoints."""
        args = _json_or_none(request.raw) or {}
        action = request.path.removeprefix("/__fake/")
        if action == "state":
            return _Response(200, self.state())
        if action == "summary":
            return _Response(200, self.summary())
        if action == "reset":
            self.reset()
        elif action == "fail-next":
            status, retry_after = args.get("status", 500), args.get("retry_after")
            self.fail_next(
                args.get("n", 1),
                status=status,
                retry_after=retry_after,
                error_format=args.get("error_format"),
            )
        elif action == "delay-next":
            self.delay_next(args.get("n", 1), args.get("seconds", 1.0))
        elif action == "drop-next":
            self.drop_next(args.get("n", 1), after_processing=args.get("after_processing", False))
        elif action == "reject":
            self.reject_destination(args["destination"])
        else:
            return _Response(404, {"error": f"unknown control {action}"})
        return _Response(200, {"ok": True})


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every report POST: building one per client takes ~50 ms of CPU."""
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class _Report:
    """A DELIVERED_TO_HANDSET report to post later; its entry is built only when it is posted
    (a bulk of tens of thousands of SMS must not cost a dict per message up front)."""

    bulk_id: str | None
    message_id: str
    to: str
    sent_at: str
    sender: str | None = None
    channel: str | None = None

    def entry(self, done_at: str) -> dict[str, Any]:
        """The report entry as Infobip posts it."""
        report: dict[str, Any] = {
            "bulkId": self.bulk_id,
            "messageId": self.message_id,
            "to": self.to,
            "sentAt": self.sent_at,
            "messageCount": 1,
            "price": {"pricePerMessage": 0.0, "currency": "EUR"},
            "status": DELIVERED_TO_HANDSET,
            "error": NO_ERROR,
            "sender": self.sender,
            "channel": self.channel,
            "doneAt": done_at,
        }
        return {k: v for k, v in report.items() if v is not None}


def _rejected_response(destination: str) -> _Response:
    """A permanent 400 for a destination Infobip will not send to."""
    pair = [("to", f"invalid destination address: {destination}")]
    return _Response(
        400, error_body(400, LEGACY, text="Invalid destination address", violations=pair)
    )


def _failure_response(failure: _Failure, family: str) -> _Response:
    """An injected failure in the API's own error format (unless the test chose one)."""
    body = error_body(failure.http_status, failure.error_format or family)
    headers = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = str(failure.retry_after)
    return _Response(failure.http_status, body, headers)


def _email_violations(form: dict[str, Any]) -> list[tuple[str, str]]:
    """Email v3's rules: known fields, to, and from/subject/body unless a template is used."""
    found = [(name, "unknown property") for name in form if name not in EMAIL_FIELDS]
    if not form.get("to"):
        found.append(("to", "must not be empty"))
    if not form.get("templateId"):
        for name in ("from", "subject"):
            if not form.get(name):
                found.append((name, "must not be blank"))
        if not (form.get("text") or form.get("html")):
            found.append(("text", "text, html or templateId is required"))
    content_type = form.get("notifyContentType")
    if content_type and content_type not in ("application/json", "application/xml"):
        found.append(("notifyContentType", "must be application/json or application/xml"))
    return found


def _as_list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


# --- HTTP plumbing ----------------------------------------------------------------------


async def _read_request(scope: Scope, receive: Receive) -> _Request:
    """The request line, headers and whole body."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    return _Request(scope["method"], scope["path"], query, headers, b"".join(chunks))


def _parse_body(request: _Request) -> Any:
    """JSON as data, multipart as {field: value or [values]}, anything else as text."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return _parse_multipart(content_type, request.raw)
    if not request.raw:
        return None
    parsed = _json_or_none(request.raw)
    return parsed if parsed is not None else request.raw.decode(errors="replace")


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, Any] | str:
    """A multipart/form-data body's fields; repeated fields become lists."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return raw.decode(errors="replace")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        value = payload.decode("utf-8")
        if name in fields:
            fields[name] = [*_as_list(fields[name]), value]
        else:
            fields[name] = value
    return fields


def _json_or_none(raw: bytes) -> Any:
    # msgspec: a 1000-message SMS request parses several times faster than with json.loads.
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None


async def _respond(send: Send, response: _Response) -> None:
    body = msgspec.json.encode(response.body)
    headers = [(b"content-type", b"application/json;charset=UTF-8")]
    headers += [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
    await send({"type": "http.response.start", "status": response.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send, receive: Receive) -> None:
    """Close the connection without a byte of answer."""
    # uvicorn's send is a method of the request cycle, which holds the socket's transport.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("cannot reach the connection to drop it")
    transport.abort()
    # Wait for uvicorn to notice, so it does not try to answer 500 on the dead socket.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _client_left_within(seconds: float, receive: Receive) -> bool:
    """Sleep, but stop early (True) when the client hangs up meanwhile."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class _BackgroundServer:
    """uvicorn serving an ASGI app on a loopback port, in a daemon thread."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


class ReportSink:
    """A webhook receiver on loopback that keeps every JSON body POSTed to it."""

    def __init__(self, *, host: str = "127.0.0.1", status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, Any]] = []
        self._server = _BackgroundServer(self, host, 0)

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def url(self, path: str = "/reports") -> str:
        """A notify URL on this sink."""
        return self.base_url + path

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, Any]]:
        """Block until `count` bodies arrived (or the timeout passed); returns them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = await _read_request(scope, receive)
        self.received.append((request.path, _json_or_none(request.raw)))
        await _respond(send, _Response(self.status, {"received": 1}))


def main(argv: list[str] | None = None) -> None:
    """Serve the fake in the foreground until killed."""
    parser = argparse.ArgumentParser(description="A fake Infobip API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--report-delay", type=float, default=0.05)
    args = parser.parse_args(argv)
    fake = FakeInfobip(api_key=args.api_key, report_delay=args.report_delay)
    # It keeps every request it received: collect rarely, and never re-scan start-up objects
    # (a full collection walking tens of thousands of kept messages costs ~100 ms).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvicorn.run(fake, host=args.host, port=args.port, lifespan="off", log_level="warning")


if __name__ == "__main__":
    main()
