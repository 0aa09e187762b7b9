"""Request-scoped pieces: the app's shared state, authentication, guarded writes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from pigeon.accounts.service import KeyAuthenticator
from pigeon.api.body import malformed_detail
from pigeon.config import Settings
from pigeon.db.writer import Writer
from pigeon.dispatch.process import WorkerProcess
from pigeon.dispatch.worker import Worker
from pigeon.errors import BadRequest
from pigeon.events.stream import StreamHub
from pigeon.idempotency.store import IdempotencyStore, StoredResponse, check_key
from pigeon.messages.accept import AcceptPipeline
from pigeon.nul import nul_error
from pigeon.pagination import Cursors


@dataclass(slots=True)
class Services:
    """What every request may use, built once in the app's lifespan."""

    settings: Settings
    engine: AsyncEngine
    reader: AsyncEngine  # for reads; on PostgreSQL the same engine
    auth: KeyAuthenticator
    idempotency: IdempotencyStore
    accept: AcceptPipeline
    stream: StreamHub
    writer: Writer  # the process's write transactions (`db.writer`)
    cursors: Cursors
    worker: Worker | None = None  # the worker in this process, if it runs here
    worker_process: WorkerProcess | None = None  # or beside it
    delivery_process: WorkerProcess | None = None  # the webhook deliveries, beside it
    # On SQLite the process applies one delivery-report POST at a time (`api.webhooks`).
    report_turn: asyncio.Lock | None = None

    def wake_worker(self) -> None:
        """A message was accepted: the worker looks for it now, not at its next poll."""
        if self.worker is not None:
            self.worker.wake.set()
        elif self.worker_process is not None:
            self.worker_process.wake()


class PigeonRequest(Request[Any, Any, Any]):
    """The app's one request class: Litestar's, whose JSON decoding fails as malformed JSON
    (400) for every reason msgspec has (see api.body), and refuses a body holding NUL
    characters (422, see pigeon.nul)."""

    async def json(self) -> Any:
        body = await self.body()
        error = nul_error(body)
        if error is not None:
            raise error
        try:
            return await super().json()
        except (UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(malformed_detail(exc, body), code="malformed_json") from exc


def services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The key from `x-api-key`, or `Authorization: <key>` / `Authorization: Bearer <key>`."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = headers.get("authorization", "").strip()
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return authorization or None


async def provide_account_id(request: Request[Any, Any, Any]) -> str:
    """The request's account id: authenticated by `require_api_key` (every authenticated
    route's guard), or here."""
    account_id = request.scope.get(ACCOUNT)
    if account_id is not None:
        return str(account_id)
    return await services(request).auth.authenticate(api_key_from(request.headers))


ACCOUNT = "pigeon.account_id"
AccountId = NamedDependency[str]
"""A handler parameter `account_id: AccountId`: the authenticated account (see the app's
dependencies)."""


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: object) -> None:
    """The guard of every authenticated route: a request without a valid key is answered
    401 before its body is read (Litestar decodes the body before resolving dependencies).

    The account id waits in the scope for the handler (`account_of`, `provide_account_id`).
    """
    auth = connection.app.state.services.auth
    connection.scope[ACCOUNT] = await auth.authenticate(api_key_from(connection.headers))  # type: ignore[literal-required]


def account_of(request: Request[Any, Any, Any]) -> str:
    """The account id `require_api_key` authenticated."""
    return request.scope[ACCOUNT]  # type: ignore[literal-required,no-any-return]


async def guarded_run(
    request: Request[Any, Any, Any], account_id: str, action: Any, *, status_code: int = 200
) -> StoredResponse:
    """Run a POST/PATCH's work in one transaction, honouring its `idempotency-key`: the
    answer as stored (a replay's, or the new one's)."""
    svc = services(request)
    key = request.headers.get("idempotency-key")
    scope = (
        (account_id, request.method, request.url.path, check_key(key)) if key is not None else None
    )
    body = await request.body()
    result = await svc.idempotency.run(
        scope=scope, body=body, action=action, status_code=status_code
    )
    if not result.replayed:
        svc.wake_worker()
    return result


def replay_headers(result: StoredResponse) -> dict[str, str] | None:
    return {"idempotent-replayed": "true"} if result.replayed else None


async def guarded_write(
    request: Request[Any, Any, Any],
    account_id: str,
    action: Any,
    *,
    status_code: int = 200,
) -> Response[bytes]:
    """Run a POST/PATCH's work in one transaction, honouring its `idempotency-key`."""
    result = await guarded_run(request, account_id, action, status_code=status_code)
    return Response(
        content=result.body,
        status_code=result.status_code,
        media_type="application/json",
        headers=replay_headers(result),
    )
