"""/v1/webhooks/infobip/{owner}/{token}/... and /v1/webhooks/twilio/{owner}/{token}/status:
what the providers post back to us."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Request, Router, post
from litestar.connection import ASGIConnection
from litestar.params import Body

from pigeon.api import openapi as doc
from pigeon.api.body import decode, too_deep
from pigeon.api.deps import services
from pigeon.errors import BadRequest, Unauthorized, field_error
from pigeon.webhooks import service, twilio
from pigeon.webhooks.schemas import DeliveryReports, InboundMessages, WebhookAnswer


class _RawResults(msgspec.Struct):
    results: list[dict[str, Any]]


async def _raw_results(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """The results exactly as the provider sent them, kept beside our normalised reading
    (stored, so nested no deeper than the free-form JSON of any other route)."""
    results = decode(await request.body(), _RawResults).results
    for index, result in enumerate(results):
        if too_deep(result):
            raise field_error(f"results[{index}]", "nested too deeply", code="data_too_deep")
    return results


async def require_webhook_token(connection: ASGIConnection[Any, Any, Any, Any], _: object) -> None:
    """The guard of the webhook routes: the URL's token is checked before the body is read."""
    params, svc = connection.path_params, connection.app.state.services
    async with svc.engine.begin() as conn:
        await service.authenticate(
            conn=conn, settings=svc.settings, owner=params["owner"], token=params["token"]
        )


async def require_twilio_token(connection: ASGIConnection[Any, Any, Any, Any], _: object) -> None:
    """The guard of Twilio's callback: its URL's owner and token, before the body is read."""
    if not twilio.for_platform(connection.path_params["owner"]):
        raise Unauthorized("unknown webhook URL", code="invalid_webhook_token")
    await require_webhook_token(connection, _)


WEBHOOK_PROBLEMS = doc.problems(
    doc.MALFORMED_JSON,
    doc.NOT_UTF8,
    doc.NESTED_TOO_DEEPLY,
    doc.INVALID_WEBHOOK_TOKEN,
    doc.TOO_LARGE,
    doc.VALIDATION,
    doc.TOO_MANY_RESULTS,
    doc.RESULT_TOO_DEEP,
    doc.DATABASE_UNAVAILABLE,
)
ANSWER = doc.ok(WebhookAnswer, doc.WEBHOOK_ANSWER, "What was received and applied")


@post(
    "/{owner:str}/{token:str}/inbound",
    status_code=200,
    summary="Inbound WhatsApp messages (Infobip's inbound format)",
    description="The URL (owner and token) is the one `pigeon webhooks` or "
    "`GET /v1/extensions/infobip` gives; no API key.",
    security=doc.NO_AUTH,
    responses={200: ANSWER, **WEBHOOK_PROBLEMS},
)
async def inbound(
    request: Request[Any, Any, Any],
    owner: str,
    token: str,
    data: Annotated[InboundMessages, Body(examples=doc.example(doc.INBOUND))],
) -> WebhookAnswer:
    raw = await _raw_results(request)
    async with services(request).engine.begin() as conn:
        return await service.record_inbound(conn=conn, owner=owner, payload=data, raw=raw)


@post(
    "/{owner:str}/{token:str}/reports",
    status_code=200,
    summary="Delivery reports (Infobip's SMS, WhatsApp and Email formats)",
    description="The URL (owner and token) is the one `pigeon webhooks` or "
    "`GET /v1/extensions/infobip` gives; no API key.",
    security=doc.NO_AUTH,
    responses={200: ANSWER, **WEBHOOK_PROBLEMS},
)
async def reports(
    request: Request[Any, Any, Any],
    owner: str,
    token: str,
    data: Annotated[DeliveryReports, Body(examples=doc.example(doc.DELIVERY_REPORTS))],
) -> WebhookAnswer:
    svc = services(request)
    # On SQLite one POST at a time: every chunk's write waits for the one writer anyway, and
    # POSTs read and decided side by side only held the event loop, and queued chunks ahead
    # of the accepts, longer (e2e Infobip p99 112-131 ms against 156-508 ms). On PostgreSQL
    # the POSTs are written on connections of their own.
    async with svc.report_turn or contextlib.nullcontext():
        raw = await _raw_results(request)
        # Each chunk resolved and decided on a read connection, then written through the
        # process's writer: on SQLite one call on its thread that holds the lock only while
        # it writes (`db.writer`), so the accepts queued behind it wait for one chunk at
        # most. The URL's token was checked by the guard.
        applied, unknown = 0, []
        for entries in service.report_chunks(data, raw):
            async with svc.reader.connect() as conn:
                chunk = await conn.run_sync(service.read_reports, owner=owner, entries=entries)
            applied += await svc.writer.transaction(service.apply_reports, chunk)
            unknown += chunk.unknown
    return service.reports_answer(
        owner=owner, received=len(data.results), applied=applied, unknown=unknown
    )


@post(
    "/{owner:str}/{token:str}/status",
    status_code=200,
    summary="Message status callbacks (Twilio's form-encoded format, signed)",
    description="The URL Pigeon gave Twilio; no API key, but `X-Twilio-Signature` must sign "
    "this URL and the form's parameters with the account's auth token.",
    security=doc.NO_AUTH,
    request_max_body_size=twilio.MAX_BYTES,
    responses={
        200: ANSWER,
        **doc.problems(
            doc.MALFORMED_CALLBACK,
            doc.TOO_MANY_PARAMETERS,
            doc.INVALID_TWILIO_SIGNATURE,
            doc.INVALID_WEBHOOK_TOKEN,
            doc.TOO_LARGE,
            doc.DATABASE_UNAVAILABLE,
        ),
    },
)
async def twilio_status(request: Request[Any, Any, Any], owner: str, token: str) -> WebhookAnswer:
    # `owner` and `token` were checked by the route's guard; named here, the document lists them
    # in the path's order (without them, Litestar's order varies from one process to the next).
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        params = parse_qsl(body, keep_blank_values=True, max_num_fields=twilio.MAX_FIELDS)
    except ValueError:
        raise BadRequest(
            f"a status callback holds at most {twilio.MAX_FIELDS} parameters",
            code="malformed_callback",
        ) from None
    svc = services(request)
    # The URL Twilio signed is the one Pigeon gave it: the public base URL and this path.
    url = svc.settings.base_url + request.url.path
    if request.url.query:
        url += f"?{request.url.query}"
    async with svc.engine.begin() as conn:
        return await twilio.apply_status_callback(
            conn=conn,
            settings=svc.settings,
            url=url,
            params=params,
            given_signature=request.headers.get("x-twilio-signature"),
        )


router = Router(
    "/v1/webhooks/infobip",
    route_handlers=[inbound, reports],
    guards=[require_webhook_token],
    tags=["Webhooks"],
)
twilio_router = Router(
    "/v1/webhooks/twilio",
    route_handlers=[twilio_status],
    guards=[require_twilio_token],
    tags=["Webhooks"],
)
