"""Domain errors: each carries a stable code and an HTTP status, and becomes JSON in one place."""

from __future__ import annotations

from typing import Any


class PigeonError(Exception):
    """Base of every error a client may see; rendered as RFC 9457 problem details."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra


class BadRequest(PigeonError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class Unauthorized(PigeonError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class NotFound(PigeonError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(PigeonError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unprocessable(PigeonError):
    status = 422
    code = "validation_error"
    title = "Unprocessable content"


def field_error(field: str, message: str, *, code: str = "validation_error") -> Unprocessable:
    """A 422 naming the one field that is wrong."""
    return Unprocessable(
        f"{field}: {message}", code=code, errors=[{"field": field, "message": message}]
    )


class DatabaseUnavailable(PigeonError):
    """The database cannot serve now (locked, full, read-only, gone): retry later.

    Raised where a driver error is mapped (`db.errors.unavailable`); the request's
    transaction was rolled back.
    """

    status = 503
    code = "database_unavailable"
    title = "Service unavailable"

    def __init__(self, reason: str, *, retry_after: int = 1) -> None:
        super().__init__(
            f"the database cannot serve requests right now ({reason}); nothing was "
            "changed, retry later",
            headers={"Retry-After": str(retry_after)},
        )
        self.reason = reason
