"""Every error leaves as RFC 9457 problem details with a stable `code`: mapped here, once."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from pigeon.db.errors import unavailable
from pigeon.errors import PigeonError

log = structlog.get_logger("pigeon.api")
PROBLEM_JSON = "application/problem+json"
_BACKTICKED = re.compile(r"`([^`]+)`")


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> bytes:
    """The JSON of a problem-details answer."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return msgspec.json.encode(body)


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A problem-details response."""
    return Response(
        content=problem_body(status, code, detail, instance=instance, errors=errors),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def handle_pigeon_error(request: Request[Any, Any, Any], exc: PigeonError) -> Response[bytes]:
    return problem(
        exc.status,
        exc.code,
        exc.detail,
        instance=request.url.path,
        errors=exc.errors,
        headers=exc.headers,
    )


def _decoded_body(request: Request[Any, Any, Any]) -> Any:
    """The JSON body Litestar already decoded for this request, if any."""
    try:
        from litestar.utils.scope.state import ScopeState

        return ScopeState.from_scope(request.scope).json
    except (ImportError, AttributeError):  # an internal API: degrade to "the whole body"
        return None


def _field_errors(extra: Any, body: Any) -> list[dict[str, str]]:
    errors = []
    for item in extra if isinstance(extra, list) else []:
        key = str(item.get("key") or "")
        message = str(item.get("message") or "invalid")
        named = _BACKTICKED.search(message)
        if named and ("unknown field" in message or "missing required field" in message):
            parent = "" if key == "data" else key
            field = f"{parent}.{named.group(1)}" if parent else named.group(1)
            message = "unknown field" if "unknown field" in message else "required"
        elif message == "'data'":
            field, message = "body", "a JSON request body is required"
        elif key == "data":
            # Litestar names both the whole body and a body field called "data" "data": when
            # the body is an object holding "data", the error is about that field.
            field = "data" if isinstance(body, dict) and "data" in body else "body"
        else:
            field = key
        errors.append({"field": field or "body", "message": message})
    return errors


def _hint(path: str, errors: list[dict[str, str]]) -> str:
    email_fields = {"content.subject", "content.html"}
    if path.endswith(("/sms", "/whatsapp")) and any(e["field"] in email_fields for e in errors):
        return f" (did you mean {path.rsplit('/', 1)[0]}/email?)"
    return ""


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    path = request.url.path
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc.extra, _decoded_body(request))
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail
        return problem(
            422, "validation_error", summary + _hint(path, errors), instance=path, errors=errors
        )
    if isinstance(exc.__cause__, SerializationException):
        return problem(
            400,
            "malformed_json",
            f"the request body is not valid JSON: {exc.detail}",
            instance=path,
        )
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        401: "unauthorized",
    }.get(exc.status_code, "http_error")
    detail = str(exc.detail) or HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {path}"
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, code, detail, instance=path, headers=headers)


UNEXPECTED = "an unexpected error occurred; it has been logged"


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    sick = unavailable(exc)  # a database that cannot serve now: 503, logged once an incident
    if sick is not None:
        return handle_pigeon_error(request, sick)
    # The route's template, never the path: a webhook's path holds its secret token.
    route = request.scope.get("path_template") or "(no route)"
    log.exception("unhandled error", route=route, method=request.method)
    return problem(
        500,
        "internal_error",
        UNEXPECTED,
        instance=request.url.path,
    )


EXCEPTION_HANDLERS: Any = {
    PigeonError: handle_pigeon_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
