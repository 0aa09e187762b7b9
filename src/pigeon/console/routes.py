"""/console: the tenant's web console, server-rendered with Jinja2 templates.

Every page but the sign-in form needs a session (`sessions`); every query is scoped to the
session's account through the same services the API uses, so another tenant's id is not
found exactly as in the API. Every POST carries the session's form token. Pages are sent with
`Content-Security-Policy: default-src 'self'`: no inline script or style, every asset is a
file of this package.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from pigeon.accounts import service as accounts
from pigeon.api.deps import services
from pigeon.console import chart, queries
from pigeon.console.sessions import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleSession,
    same_token,
    session_for,
    sign_in,
    sign_out,
)
from pigeon.errors import NotFound, PigeonError
from pigeon.identities import service as identities
from pigeon.ids import new_token
from pigeon.messages import query
from pigeon.messages.status import Group
from pigeon.users import service as users

log = structlog.get_logger("pigeon.console")
HERE = Path(__file__).parent
PAGE = 25
FRAGMENT_HEADER = "x-console-fragment"  # console.js' refreshes: answered 401, not redirected
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class NotSignedIn(Exception):
    """No live session: the sign-in page (or a 401 for a background refresh)."""


class Refused(PigeonError):
    """A console form posted without its CSRF token."""

    def __init__(self) -> None:
        super().__init__(
            "this form was not sent by the console page it came from (its CSRF token is "
            "missing or wrong): reload the page and try again",
            code="csrf_token_invalid",
            status=403,
        )


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["pretty"] = _pretty
    return env


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)


TEMPLATES = TemplateConfig(engine=JinjaTemplateEngine.from_environment(_environment()))


class SecurityHeaders:
    """Every console answer, pages and errors alike, with the CSP and its companions."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _secure(request: Request[Any, Any, Any]) -> bool:
    """Cookies are Secure over https: the request's own scheme or the public URL's."""
    public = services(request).settings.base_url
    return request.url.scheme == "https" or public.startswith("https://")


async def _session(request: Request[Any, Any, Any]) -> ConsoleSession:
    async with services(request).reader.connect() as conn:
        session = await session_for(conn=conn, token=request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NotSignedIn
    return session


async def _checked_form(request: Request[Any, Any, Any], expected: str | None) -> dict[str, str]:
    form = await request.form()
    fields = {name: str(form.get(name)) for name in form}
    if not same_token(expected, fields.get(CSRF_FIELD)):
        raise Refused
    return fields


def _page(
    request: Request[Any, Any, Any],
    name: str,
    session: ConsoleSession | None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    return Template(
        template_name=name,
        status_code=status_code,
        context={
            "session": session,
            "csrf_field": CSRF_FIELD,
            "csrf_token": session.csrf_token if session else "",
            "path": request.url.path,
            **context,
        },
    )


@get("/login", include_in_schema=False)
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    try:
        await _session(request)
        return Redirect("/console", status_code=303)  # signed in already
    except NotSignedIn:
        pass
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
    page = _page(request, "login.html", None, login_token=token, error=None)
    page.set_cookie(_login_cookie(request, token))
    return page


def _login_cookie(request: Request[Any, Any, Any], token: str) -> Cookie:
    return Cookie(
        key=LOGIN_CSRF_COOKIE,
        value=token,
        path="/console",
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


@post("/login", include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await _checked_form(request, request.cookies.get(LOGIN_CSRF_COOKIE))
    svc = services(request)
    async with svc.engine.begin() as conn:
        opened = await sign_in(
            conn=conn,
            api_key=form.get("api_key", "").strip(),
            lifetime_seconds=svc.settings.console_session_seconds,
        )
    if opened is None:
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
        error = "That API key is not valid, or it was revoked."
        return _page(request, "login.html", None, 401, login_token=token, error=error)
    cookie, session = opened
    log.info("console sign-in", account_id=session.account_id, key_id=session.key_id)
    response: Response[Any] = Redirect("/console", status_code=303)
    response.set_cookie(
        key=SESSION_COOKIE,
        value=cookie,
        path="/console",
        max_age=svc.settings.console_session_seconds,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return response


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await _session(request)
    await _checked_form(request, session.csrf_token)
    async with services(request).engine.begin() as conn:
        await sign_out(conn=conn, session=session)
    response: Response[Any] = Redirect("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


@get("/", include_in_schema=False)
async def dashboard(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        board = await queries.dashboard(conn=conn, account_id=session.account_id)
    graph = chart.hourly_chart(
        board.hours,
        {"accepted": board.accepted, "delivered": board.delivered, "failed": board.failed},
    )
    return _page(
        request, "dashboard.html", session, board=board, chart=graph, groups=queries.GROUPS
    )


FILTERS = ("channel", "status", "recipient", "from", "to")


def _filters(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {
        name: value.strip()
        for name in FILTERS
        if (value := request.query_params.get(name, "")) and value.strip()
    }


def _moment(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise PigeonError(
            f"{field}: not a date and time", code="validation_error", status=422
        ) from None


async def _message_page(
    request: Request[Any, Any, Any], session: ConsoleSession, filters: dict[str, str]
) -> tuple[Any, str | None]:
    """A page of messages for the filters; an error message instead of a page for bad ones."""
    try:
        async with services(request).reader.connect() as conn:
            page = await query.list_messages(
                conn=conn,
                account_id=session.account_id,
                limit=PAGE,
                cursor=request.query_params.get("cursor"),
                cursors=services(request).cursors,
                channel=filters.get("channel"),
                status=filters.get("status"),
                recipient=filters.get("recipient"),
                since=_moment(filters.get("from"), "from"),
                until=_moment(filters.get("to"), "to"),
            )
    except PigeonError as exc:
        return None, exc.detail
    return page, None


@get("/messages", include_in_schema=False)
async def message_list(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    filters = _filters(request)
    page, error = await _message_page(request, session, filters)
    return _page(
        request,
        "messages.html",
        session,
        page=page,
        error=error,
        filters=filters,
        cursor=request.query_params.get("cursor"),
        query_string=request.url.query,
        groups=[g.name for g in Group],
    )


@get("/messages/rows", include_in_schema=False)
async def message_rows(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    page, error = await _message_page(request, session, _filters(request))
    return _page(request, "_message_rows.html", session, page=page, error=error)


async def _message(request: Request[Any, Any, Any], message_id: str) -> dict[str, Any]:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        message = await query.get_message(
            conn=conn, account_id=session.account_id, message_id=message_id
        )
        tried = await queries.attempts(conn=conn, message_id=message.messageId)
    return {"session": session, "message": message, "attempts": tried}


@get("/messages/{message_id:str}", include_in_schema=False)
async def message_detail(request: Request[Any, Any, Any], message_id: str) -> Template:
    found = await _message(request, message_id)
    return _page(request, "message.html", **found)


@get("/messages/{message_id:str}/timeline", include_in_schema=False)
async def message_timeline(request: Request[Any, Any, Any], message_id: str) -> Template:
    found = await _message(request, message_id)
    return _page(request, "_timeline.html", **found)


async def _recipient_messages(
    request: Request[Any, Any, Any], session: ConsoleSession, recipient_id: str
) -> Any:
    async with services(request).reader.connect() as conn:
        return await query.list_messages(
            conn=conn,
            account_id=session.account_id,
            limit=PAGE,
            cursor=None,
            cursors=services(request).cursors,
            recipient=recipient_id,
        )


@get("/users", include_in_schema=False)
async def user_list(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        page = await users.list_users(
            conn=conn,
            account_id=session.account_id,
            limit=PAGE,
            cursor=request.query_params.get("cursor"),
            cursors=services(request).cursors,
        )
    return _page(request, "users.html", session, page=page)


@get("/users/{user_id:str}", include_in_schema=False)
async def user_detail(request: Request[Any, Any, Any], user_id: str) -> Template:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        user = await users.get_user(conn=conn, account_id=session.account_id, user_id=user_id)
    sent = await _recipient_messages(request, session, user.id)
    return _page(request, "user.html", session, user=user, page=sent)


@get("/identities", include_in_schema=False)
async def identity_list(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        page = await identities.list_identities(
            conn=conn,
            account_id=session.account_id,
            limit=PAGE,
            cursor=request.query_params.get("cursor"),
            cursors=services(request).cursors,
        )
    return _page(request, "identities.html", session, page=page)


@get("/identities/{identity_id:str}", include_in_schema=False)
async def identity_detail(request: Request[Any, Any, Any], identity_id: str) -> Template:
    session = await _session(request)
    async with services(request).reader.connect() as conn:
        identity = await identities.get_identity(
            conn=conn, account_id=session.account_id, identity_id=identity_id
        )
    sent = await _recipient_messages(request, session, identity.id)
    return _page(request, "identity.html", session, identity=identity, page=sent)


async def _keys_page(
    request: Request[Any, Any, Any], session: ConsoleSession, created: Any = None
) -> Template:
    async with services(request).reader.connect() as conn:
        rows = await queries.keys(conn=conn, account_id=session.account_id)
    return _page(request, "keys.html", session, keys=rows, created=created)


@get("/keys", include_in_schema=False)
async def key_list(request: Request[Any, Any, Any]) -> Template:
    return await _keys_page(request, await _session(request))


@post("/keys", include_in_schema=False, status_code=200)
async def key_create(request: Request[Any, Any, Any]) -> Template:
    session = await _session(request)
    await _checked_form(request, session.csrf_token)
    async with services(request).engine.begin() as conn:
        created = await accounts.create_key(conn=conn, account_id=session.account_id)
    log.info("console created an API key", account_id=session.account_id, key_id=created.id)
    return await _keys_page(request, session, created=created)


@post("/keys/{key_id:str}/revoke", include_in_schema=False, status_code=303)
async def key_revoke(request: Request[Any, Any, Any], key_id: str) -> Response[Any]:
    session = await _session(request)
    await _checked_form(request, session.csrf_token)
    async with services(request).engine.begin() as conn:
        if not await queries.owns_key(conn=conn, account_id=session.account_id, key_id=key_id):
            raise NotFound(f"API key {key_id} not found", code="api_key_not_found")
        await accounts.revoke_key(conn=conn, key_id=key_id)
    log.info("console revoked an API key", account_id=session.account_id, key_id=key_id)
    # Revoking the key this session signed in with ends the session: the next page says so.
    return Redirect("/console/keys", status_code=303)


def _not_signed_in(request: Request[Any, Any, Any], _: NotSignedIn) -> Response[Any]:
    if request.headers.get(FRAGMENT_HEADER):
        return Response("signed out", status_code=401, media_type="text/plain")
    return Redirect("/console/login", status_code=303)


def _error_page(request: Request[Any, Any, Any], exc: PigeonError) -> Template:
    return _page(request, "error.html", None, exc.status, error=exc)


static = create_static_files_router(
    path="/console/static", directories=[HERE / "static"], include_in_schema=False
)

router = Router(
    "/console",
    route_handlers=[
        login_form,
        login,
        logout,
        dashboard,
        message_list,
        message_rows,
        message_detail,
        message_timeline,
        user_list,
        user_detail,
        identity_list,
        identity_detail,
        key_list,
        key_create,
        key_revoke,
    ],
    middleware=[SecurityHeaders],
    exception_handlers={NotSignedIn: _not_signed_in, PigeonError: _error_page},
    include_in_schema=False,
)
