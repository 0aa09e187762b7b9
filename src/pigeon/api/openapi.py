"""What the OpenAPI document says beyond the handlers' types: errors, headers, real examples.

Litestar documents a handler's body, parameters and success type by itself. What it cannot see
is what Pigeon does around them: every error leaves as problem details (api/problems.py) with a
stable `code`, writes honour `idempotency-key`, and a few answers carry `Retry-After`. Each route
names the problems it can answer with (`problems(...)`) and, for a guarded write,
`operation_class=IdempotentWrite`; this module turns that into the document. Examples are the
docs' own values (the demo tenant), never generated filler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
)
from litestar.routes import HTTPRoute

from pigeon.api.body import MAX_BODY_BYTES, MAX_DEPTH
from pigeon.api.problems import PROBLEM_JSON
from pigeon.demo import DEMO_OBJECT_ID
from pigeon.http import MAX_HEADER_BYTES
from pigeon.idempotency.store import MAX_KEY_LENGTH
from pigeon.webhooks import twilio
from pigeon.webhooks.schemas import MAX_WEBHOOK_ENTRIES

NO_AUTH: list[dict[str, list[str]]] = [{}]
"""The `security` of a route that takes no API key (webhooks, health)."""


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct):
    """RFC 9457 problem details: how every error leaves Pigeon (`code` is stable)."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


@dataclass(frozen=True, slots=True)
class Documented:
    """One problem a route may answer with, as the server words it."""

    status: int
    code: str
    detail: str
    field: str | None = None

    def example(self) -> Example:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if self.field is not None:
            body["errors"] = [{"field": self.field, "message": self.detail.split(": ", 1)[-1]}]
        return Example(summary=self.code, value=body)


OTHER_ID = "634b56217f6a7b0be52dff00"  # a well-formed id the demo tenant does not have

MALFORMED_JSON = Documented(
    400, "malformed_json", "the request body is not valid JSON: Input data was truncated"
)
NOT_UTF8 = Documented(400, "malformed_json", "the request body is not valid UTF-8 (byte 14)")
NESTED_TOO_DEEPLY = Documented(
    400, "malformed_json", "the request body is not valid JSON: nested too deeply"
)
MISSING_API_KEY = Documented(
    401, "missing_api_key", "missing API key: send it in the x-api-key header"
)
INVALID_API_KEY = Documented(401, "invalid_api_key", "invalid or revoked API key")
INVALID_WEBHOOK_TOKEN = Documented(401, "invalid_webhook_token", "unknown webhook URL")
INVALID_TWILIO_SIGNATURE = Documented(401, "invalid_twilio_signature", "invalid X-Twilio-Signature")
MALFORMED_CALLBACK = Documented(400, "malformed_callback", "a status callback names its MessageSid")
TOO_MANY_PARAMETERS = Documented(
    400,
    "malformed_callback",
    f"a status callback holds at most {twilio.MAX_FIELDS} parameters",
)
USER_NOT_FOUND = Documented(404, "user_not_found", f"user {OTHER_ID} not found")
IDENTITY_NOT_FOUND = Documented(404, "identity_not_found", f"identity {OTHER_ID} not found")
MESSAGE_NOT_FOUND = Documented(404, "message_not_found", "message 1795854949169642417726 not found")
EXTENSION_NOT_FOUND = Documented(
    404,
    "infobip_extension_not_enabled",
    "the Infobip extension is not enabled for this account: PUT /v1/extensions/infobip",
)
USERNAME_TAKEN = Documented(409, "username_taken", "username 'ana.horvat' is already taken")
IN_FLIGHT = Documented(
    409,
    "idempotency_request_in_flight",
    "a request with this idempotency-key is still being processed; retry shortly",
)
TOO_LARGE = Documented(413, "payload_too_large", "Request Entity Too Large")
REQUEST_TIMEOUT = Documented(408, "request_timeout", "the request did not arrive within 30 seconds")
HEADERS_TOO_LARGE = Documented(
    431,
    "headers_too_large",
    f"the request's line and headers exceed {MAX_HEADER_BYTES} bytes",
)
VALIDATION = Documented(
    422, "validation_error", "content.subject: unknown field", field="content.subject"
)
KEY_REUSED = Documented(
    422,
    "idempotency_key_reused",
    "this idempotency-key was already used with a different request body",
)
INVALID_KEY = Documented(
    422,
    "invalid_idempotency_key",
    f"idempotency-key: must be 1 to {MAX_KEY_LENGTH} characters",
    field="idempotency-key",
)
INVALID_CURSOR = Documented(
    422, "invalid_cursor", "cursor: not a cursor this API issued", field="cursor"
)
DATA_TOO_DEEP = Documented(
    422,
    "data_too_deep",
    f"data: must nest at most {MAX_DEPTH} levels deep",
    field="data",
)
DATA_TOO_LARGE = Documented(
    422,
    "data_too_large",
    "data: must be at most 65536 bytes as JSON (it is 70012)",
    field="data",
)
TOO_MANY_RESULTS = Documented(
    422,
    "validation_error",
    f"results: Expected `array` of length <= {MAX_WEBHOOK_ENTRIES}",
    field="results",
)
RESULT_TOO_DEEP = Documented(
    422, "data_too_deep", "results[0]: nested too deeply", field="results[0]"
)
INVALID_PHONE = Documented(
    422, "invalid_phone", "channel.sms: '12' is not a phone number", field="channel.sms"
)
INVALID_EMAIL = Documented(
    422,
    "invalid_email",
    "channel.email: An email address must have an @-sign.",
    field="channel.email",
)
IDENTITY_FIELD_NOT_FOUND = Documented(
    422, "identity_not_found", f"identity: identity {OTHER_ID} not found", field="identity"
)
DATABASE_UNAVAILABLE = Documented(
    503, "database_unavailable", "the database is unavailable; retry shortly"
)
MIGRATIONS_NOT_AT_HEAD = Documented(
    503,
    "migrations_not_at_head",
    "the database schema is at 0003, this code needs 0004: run `pigeon db upgrade`",
)

AUTH = (MISSING_API_KEY, INVALID_API_KEY)
BODY = (MALFORMED_JSON, NOT_UTF8, NESTED_TOO_DEEPLY, TOO_LARGE, VALIDATION)
DATA = (DATA_TOO_DEEP, DATA_TOO_LARGE)  # a User's or Identity's free-form `data`
HTTP = (REQUEST_TIMEOUT, HEADERS_TOO_LARGE)  # any request, before a route sees it
IDEMPOTENCY = (IN_FLIGHT, KEY_REUSED, INVALID_KEY)
READ = (*AUTH, DATABASE_UNAVAILABLE)
LIST = (*READ, VALIDATION, INVALID_CURSOR)
WRITE = (*AUTH, *BODY, *IDEMPOTENCY, DATABASE_UNAVAILABLE)

_WHY = {
    400: "The body is not JSON (or not UTF-8, or nested deeper than the decoder takes).",
    401: "No API key, an unknown or revoked one (or, on a webhook, an unknown URL); checked "
    "before the body is read.",
    404: "Not found: another tenant's id answers exactly like a missing one.",
    408: "The request did not arrive whole within `PIGEON_HTTP_TIMEOUT_SECONDS` (30 s); the "
    "connection is closed.",
    409: "A conflict; `idempotency_request_in_flight` comes with `Retry-After`.",
    413: f"The request body is too large: over {MAX_BODY_BYTES:,} bytes ({twilio.MAX_BYTES:,} "
    "for a Twilio status callback).",
    422: "The request is well-formed JSON but breaks a rule; `errors` names the fields.",
    431: f"The request line and headers are over {MAX_HEADER_BYTES:,} bytes in all; the "
    "connection is closed.",
    503: "Not now (the database is unavailable, or not migrated); retry after `Retry-After`.",
}


def problems(*documented: Documented) -> dict[int, ResponseSpec]:
    """The error answers of a route, one per status, each listing its codes as examples."""
    by_status: dict[int, list[Documented]] = {}
    for item in documented:
        by_status.setdefault(item.status, []).append(item)
    return {
        status: ResponseSpec(
            Problem,
            generate_examples=False,
            description=f"{_WHY[status]} Codes: "
            + ", ".join(f"`{item.code}`" for item in items)
            + ".",
            media_type=PROBLEM_JSON,
            examples=[item.example() for item in items],
        )
        for status, items in sorted(by_status.items())
    }


def ok(model: type[Any], example: Any, description: str) -> ResponseSpec:
    """A success answer documented with one real example."""
    return ResponseSpec(
        model,
        generate_examples=False,
        description=description,
        examples=[Example(summary="the demo tenant", value=example)],
    )


NOT_FOUND = Documented(404, "not_found", f"nothing found for {OTHER_ID}")
_NOT_PARAMETERS = {"request", "data", "account_id", "state", "scope", "headers", "cookies"}


def document_routes(app: Litestar) -> None:
    """Document every route as Pigeon answers, whoever wrote it.

    - A status a route leaves out of `responses=problems(...)` gets the default for its kind:
      408 and 431 on every route; 401 and 503 with an API key; 400, 413 and 422 with a body;
      422 with query parameters (`invalid_cursor` with a cursor); 404 with path parameters.
    - A POST or PATCH with an API key honours `idempotency-key` (api/deps.guarded_write, the
      sends): it is an IdempotentWrite; every other route a DocumentedOperation.
    - No generated examples: Litestar's are random letters; examples are the docs' own.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.include_in_schema is False or "OPTIONS" in handler.http_methods:
                continue
            stated = {
                status: dataclasses.replace(spec, generate_examples=False)
                for status, spec in (handler.responses or {}).items()
            }
            answers = {**problems(*_default_problems(route, handler)), **stated}
            handler.responses = dict(sorted(answers.items()))
            if issubclass(handler.operation_class, DocumentedOperation):
                continue
            writes = handler.http_methods & {"POST", "PATCH"}
            idempotent = writes and handler.security != NO_AUTH
            handler.operation_class = IdempotentWrite if idempotent else DocumentedOperation


def _default_problems(route: HTTPRoute, handler: HTTPRouteHandler) -> list[Documented]:
    signature = set(handler.parsed_fn_signature.parameters)
    path_names = set(route.path_parameters)
    with_key = handler.security != NO_AUTH
    found: list[Documented] = [*HTTP]
    if with_key:
        found += [*AUTH, DATABASE_UNAVAILABLE]
    if "data" in signature:
        found += BODY
    elif signature - _NOT_PARAMETERS - path_names:
        found.append(VALIDATION)
    if "cursor" in signature:
        found.append(INVALID_CURSOR)
    if path_names and with_key:
        found.append(NOT_FOUND)
    return found


RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    description="Seconds to wait before retrying.",
)
REPLAYED = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING, enum=["true"]),
    description="Present when this is the stored answer to an earlier request with the same "
    "idempotency-key: nothing was done again.",
)
IDEMPOTENCY_KEY = Parameter(
    name="idempotency-key",
    param_in="header",
    required=False,
    description="Makes a retry safe: the same key with the same body replays the first answer "
    "(header `idempotent-replayed: true`); with a different body, 422 "
    "`idempotency_key_reused`; while the first is in flight, 409 with `Retry-After`. Scoped to "
    "the account, method and path; kept 24 hours (`PIGEON_IDEMPOTENCY_TTL_SECONDS`).",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_KEY_LENGTH, pattern=r"\S"),
    examples={"example": Example(value="27373fabc392933deffda")},
)


@dataclass
class DocumentedOperation(Operation):
    """An operation answering errors as its route lists them, `Retry-After` included.

    Litestar documents a failed validation as a 400 in its own JSON shape; Pigeon answers it
    422 `validation_error` in problem details, which the route lists.
    """

    def __post_init__(self) -> None:
        responses = self.responses or {}
        default_400 = responses.get("400")
        if isinstance(default_400, OpenAPIResponse) and PROBLEM_JSON not in (
            default_400.content or {}
        ):
            del responses["400"]
        for status, response in responses.items():
            if status in {"409", "503"} and isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "Retry-After": RETRY_AFTER}


@dataclass
class IdempotentWrite(DocumentedOperation):
    """A POST or PATCH that honours `idempotency-key` (api/deps.guarded_write, the sends).

    Documents the header, and `idempotent-replayed` on the success answer.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parameters = [*(self.parameters or []), IDEMPOTENCY_KEY]
        for status, response in (self.responses or {}).items():
            if status.startswith("2") and isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "idempotent-replayed": REPLAYED}


def path_id(description: str) -> Any:
    """A path parameter holding an object id, with the demo tenant's id as its example."""
    from litestar.params import Parameter as ParameterKwarg

    return ParameterKwarg(description=description, examples=[Example(value=DEMO_OBJECT_ID)])


# The demo tenant's records, as the API shows them (timestamps from one demo start).
_AT = "2026-12-01T07:17:20.448742Z"
PENDING_ACCEPTED = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}
DELIVERED_TO_HANDSET = {
    "groupId": 3,
    "groupName": "DELIVERED",
    "id": 5,
    "name": "DELIVERED_TO_HANDSET",
    "description": "Message delivered to handset",
}
MESSAGE_ID = "1795854949169642417726"
SEND_ANSWER = {
    "messages": [
        {"messageId": MESSAGE_ID, "status": PENDING_ACCEPTED, "destination": "38598123456"}
    ]
}
USER = {
    "id": DEMO_OBJECT_ID,
    "username": "ana.horvat",
    "data": {"demo": True},
    "channel": {
        "sms": "38598123456",
        "whatsapp": "38598123456",
        "email": "ana.horvat@example.com",
    },
    "identity": DEMO_OBJECT_ID,
    "active": True,
    "created_at": _AT,
    "updated_at": _AT,
}
PERSON = {
    "firstName": "Ana",
    "lastName": "Horvat",
    "contactInformation": {
        "phone": [{"number": "38598123456"}],
        "email": [{"address": "ana.horvat@example.com"}],
    },
}
IDENTITY = {
    "id": DEMO_OBJECT_ID,
    "type": "person",
    "country": "HR",
    "currency": "EUR",
    "data": {},
    "person": PERSON,
    "created_at": _AT,
    "updated_at": _AT,
    "sync": {"state": "synced", "error": None, "syncedAt": _AT},
}
_MESSAGE_SUMMARY = {
    "messageId": MESSAGE_ID,
    "channel": "sms",
    "recipient": {"type": "user", "id": DEMO_OBJECT_ID},
    "destination": "38598123456",
    "sender": "Pigeon",
    "status": DELIVERED_TO_HANDSET,
    "error": None,
    "attempts": 1,
    "providerMessageId": f"sandbox-{MESSAGE_ID}",
    "createdAt": "2026-12-01T07:17:22.815475Z",
    "updatedAt": "2026-12-01T07:17:23.357314Z",
    "sentAt": "2026-12-01T07:17:22.832178Z",
    "doneAt": "2026-12-01T07:17:23.357314Z",
}
MESSAGE = {
    **_MESSAGE_SUMMARY,
    "content": {"text": "This is test SMS message"},
    "history": [
        {
            "status": PENDING_ACCEPTED,
            "at": "2026-12-01T07:17:22.815475Z",
            "source": "api",
            "detail": None,
        },
        {
            "status": DELIVERED_TO_HANDSET,
            "at": "2026-12-01T07:17:23.357314Z",
            "source": "report",
            "detail": None,
        },
    ],
}
MESSAGE_LIST = {"items": [_MESSAGE_SUMMARY], "next_cursor": None}
_WEBHOOK = "http://127.0.0.1:8080/v1/webhooks/infobip/634b56217f6a7b0be52d0000/TOKEN"
EXTENSION = {
    "enabled": True,
    "baseUrl": "https://demo.api.infobip.com",
    "apiKey": "****-key",
    "smsSender": "Orangepill",
    "whatsappSender": "447860088594",
    "emailSender": "Orangepill <noreply@orangepill.example>",
    "webhooks": {"deliveryReports": f"{_WEBHOOK}/reports", "inbound": f"{_WEBHOOK}/inbound"},
    "createdAt": _AT,
    "updatedAt": _AT,
}


def example(value: Any, summary: str = "the docs' example") -> list[Example]:
    """A request body's `examples`: one real value."""
    return [Example(summary=summary, value=value)]


USER_CREATE = {
    "username": "ana.horvat",
    "data": {"demo": True},
    "channel": USER["channel"],
    "identity": DEMO_OBJECT_ID,
}
USER_UPDATE = {"channel": {"email": "ana.horvat@example.com"}, "active": True}
IDENTITY_CREATE = {"type": "person", "country": "HR", "currency": "EUR", "person": PERSON}
IDENTITY_UPDATE = {"person": {"firstName": "Ana", "lastName": "Horvat"}}
SMS = {"content": {"text": "This is test SMS message"}}
WHATSAPP = {"content": {"text": "This is test WhatsApp message"}}
EMAIL = {
    "content": {
        "subject": "This is a test subject",
        "html": "<b>This is test html email message</b>",
        "text": "This is test text email message",
    }
}
# A WhatsApp template (outside the 24-hour window) in Orangepill's form, and in Pigeon's.
WHATSAPP_TEMPLATE = {
    "content": {
        "templateName": "welcome_multiple_languages",
        "templateData": {"body": {"placeholders": ["Ana"]}},
        "language": "en",
    }
}
WHATSAPP_TEMPLATE_OBJECT = {
    "content": {
        "template": {
            "name": "welcome_multiple_languages",
            "language": "en",
            "placeholders": ["Ana"],
        }
    }
}
APP_SMS = {"to": "38598123456", **SMS}
APP_WHATSAPP = {"to": "38598123456", **WHATSAPP}
APP_EMAIL = {"to": "ana.horvat@example.com", **EMAIL}
EXTENSION_PUT = {
    "baseUrl": "https://demo.api.infobip.com",
    "apiKey": "demo-infobip-api-key",
    "smsSender": "Orangepill",
    "whatsappSender": "447860088594",
    "emailSender": "Orangepill <noreply@orangepill.example>",
}
DELIVERY_REPORTS = {
    "results": [
        {
            "messageId": MESSAGE_ID,
            "to": "38598123456",
            "status": DELIVERED_TO_HANDSET,
            "doneAt": "2026-12-01T07:17:23.356+0000",
        }
    ]
}
INBOUND = {
    "results": [
        {
            "from": "38598123456",
            "to": "447860088594",
            "receivedAt": "2026-12-01T07:15:00.000+0000",
            "messageId": "ABEGOFl3VCVWAgo-sBvYQ8wtRHTO",
            "message": {"type": "TEXT", "text": "Hi"},
        }
    ]
}
WEBHOOK_ANSWER = {"received": 1, "applied": 1, "unknown": 0}

# What the send rules answer (messages/rules.py), per recipient and channel.
USER_INACTIVE = Documented(422, "user_inactive", f"user {DEMO_OBJECT_ID} is not active")
USER_CHANNEL_NOT_SET = Documented(
    422, "channel_not_set", f"user {DEMO_OBJECT_ID} has no channel.sms set", field="channel.sms"
)
PERSON_CHANNEL_NOT_SET = Documented(
    422,
    "channel_not_set",
    f"identity {DEMO_OBJECT_ID} has no person.contactInformation.phone[0].number set",
    field="person.contactInformation.phone[0].number",
)
NOT_A_PERSON = Documented(
    422, "not_a_person", f"identity {DEMO_OBJECT_ID} is a company, not a person"
)
EXTENSION_NOT_ENABLED = Documented(
    422,
    "infobip_extension_not_enabled",
    "messaging Persons needs the Infobip extension: enable it with PUT /v1/extensions/infobip",
)
SENDER_MISSING = Documented(
    422,
    "extension_sender_missing",
    "the Infobip extension has no whatsappSender: set it with PUT /v1/extensions/infobip",
    field="whatsappSender",
)
EMPTY_TEXT = Documented(422, "empty_text", "content.text: must not be empty", field="content.text")
MISSING_SUBJECT = Documented(
    422, "missing_subject", "content.subject: an email needs a subject", field="content.subject"
)
MISSING_BODY = Documented(
    422, "missing_body", "an email needs a body: content.html, content.text or both"
)
NO_INTERACTION = Documented(
    422,
    "whatsapp_no_interaction",
    "38598123456 has never written to WhatsApp number 447860088593: WhatsApp lets a business "
    "message only people who have contacted it first",
)
WINDOW_CLOSED = Documented(
    422,
    "whatsapp_window_closed",
    "38598123456 last wrote to WhatsApp number 447860088593 at 2026-11-29T07:15:00+00:00, "
    "more than 24 hours ago: WhatsApp allows free-form messages only within 24 hours of the "
    "customer's last message; send a template",
)
INVALID_TO_PHONE = Documented(422, "invalid_phone", "to: '12' is not a phone number", field="to")
INVALID_TO_EMAIL = Documented(
    422, "invalid_email", "to: An email address must have an @-sign.", field="to"
)
SEND_RULES = {
    "user": (USER_NOT_FOUND, USER_INACTIVE, USER_CHANNEL_NOT_SET),
    "person": (
        IDENTITY_NOT_FOUND,
        NOT_A_PERSON,
        EXTENSION_NOT_ENABLED,
        PERSON_CHANNEL_NOT_SET,
    ),
    "app": (),
}
TEMPLATE_LANGUAGE = Documented(
    422,
    "validation_error",
    "content.language: a template needs its language, e.g. en",
    field="content.language",
)
CONTENT_RULES = {
    "sms": (EMPTY_TEXT,),
    "whatsapp": (EMPTY_TEXT, TEMPLATE_LANGUAGE, NO_INTERACTION, WINDOW_CLOSED),
    "email": (MISSING_SUBJECT, MISSING_BODY),
}
APP_DESTINATION = {"sms": INVALID_TO_PHONE, "whatsapp": INVALID_TO_PHONE, "email": INVALID_TO_EMAIL}
SEND_EXAMPLES = {
    ("user", "sms"): SMS,
    ("person", "sms"): SMS,
    ("app", "sms"): APP_SMS,
    ("user", "whatsapp"): WHATSAPP,
    ("person", "whatsapp"): WHATSAPP,
    ("app", "whatsapp"): APP_WHATSAPP,
    ("user", "email"): EMAIL,
    ("person", "email"): EMAIL,
    ("app", "email"): APP_EMAIL,
}


def send_examples(kind: str, channel: str) -> list[Example]:
    """A send body's examples: the docs' text, and for WhatsApp a template in both forms."""
    found = example(SEND_EXAMPLES[kind, channel])
    if channel == "whatsapp":
        to = {"to": APP_WHATSAPP["to"]} if kind == "app" else {}
        found += [
            Example(summary="a template, Orangepill's form", value={**to, **WHATSAPP_TEMPLATE}),
            Example(summary="a template", value={**to, **WHATSAPP_TEMPLATE_OBJECT}),
        ]
    return found


def send_problems(kind: str, channel: str) -> tuple[Documented, ...]:
    """Every problem a send route may answer with."""
    extra: tuple[Documented, ...] = ()
    if kind == "app":
        extra = (APP_DESTINATION[channel],)
    elif kind == "person" and channel != "sms":
        extra = (SENDER_MISSING,)
    return (*WRITE, *SEND_RULES[kind], *extra, *CONTENT_RULES[channel])
