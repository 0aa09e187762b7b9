"""The send routes' fast path answers exactly as the Litestar routes it stands in front of.

Each case runs twice on one app: once through the ASGI app as served (fast path in front) and
once straight through the Litestar app behind it. Answers must match: status, content type,
the idempotent-replayed header and the body (message ids aside, which are new each time).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pigeon.app import create_app
from pigeon.config import Settings
from pigeon.db.migrate import upgrade
from tests.conftest import DATABASES, DEMO_KEY

USER = "/v1/users/634b56217f6a7b0be52dffbd/message"
PERSON = "/v1/identities/634b56217f6a7b0be52d0001/person/message"
SMS = {"content": {"text": "This is test SMS message"}}
Send = Callable[..., Awaitable[httpx.Response]]
CASES: dict[str, list[tuple[str, dict[str, Any] | bytes, dict[str, str]]]] = {
    "sms to a user": [(f"{USER}/sms", SMS, {})],
    "whatsapp to a user who never wrote": [(f"{USER}/whatsapp", SMS, {})],
    "email to a user": [
        (f"{USER}/email", {"content": {"subject": "Hi", "html": "<b>Hi</b>", "text": "Hi"}}, {})
    ],
    "sms to an app number": [("/v1/apps/message/sms", {"to": "+385 98 123 4567", **SMS}, {})],
    "sms to an invalid app number": [("/v1/apps/message/sms", {"to": "12", **SMS}, {})],
    "email to an app address": [
        (
            "/v1/apps/message/email",
            {"to": "someone@example.com", "content": {"subject": "S", "text": "T"}},
            {},
        )
    ],
    "sms to a person without the extension": [(f"{PERSON}/sms", SMS, {})],
    "unknown user": [("/v1/users/000000000000000000000000/message/sms", SMS, {})],
    "not an object id": [("/v1/users/nope/message/sms", SMS, {})],
    "trailing slash": [(f"{USER}/sms/", SMS, {})],
    "bearer key": [(f"{USER}/sms", SMS, {"authorization": f"Bearer {DEMO_KEY}", "x-api-key": ""})],
    "no key": [(f"{USER}/sms", SMS, {"x-api-key": ""})],
    "unknown key": [(f"{USER}/sms", SMS, {"x-api-key": "nope"})],
    "malformed JSON": [(f"{USER}/sms", b'{"content": ', {})],
    "empty body": [(f"{USER}/sms", b"", {})],
    "invalid UTF-8": [(f"{USER}/sms", b'{"content": {"text": "\xff"}}', {})],
    "an overlong encoding": [(f"{USER}/sms", b'{"content": {"text": "\xc0\xaf"}}', {})],
    "nested too deeply to decode": [(f"{USER}/sms", b"[" * 5000 + b"]" * 5000, {})],
    "no key and malformed JSON": [(f"{USER}/sms", b'{"content": ', {"x-api-key": ""})],
    "wrong type": [(f"{USER}/sms", {"content": {"text": 5}}, {})],
    "unknown field": [(f"{USER}/sms", {"content": {"text": "x"}, "extra": 1}, {})],
    "a subject sent to /sms": [(f"{USER}/sms", {"content": {"subject": "S", "text": "T"}}, {})],
    "blank text": [(f"{USER}/sms", {"content": {"text": "   "}}, {})],
    "too long for one SMS": [(f"{USER}/sms", {"content": {"text": "x" * 1601}}, {})],
    "an email bigger than the fast path takes": [
        (
            f"{USER}/email",
            {"content": {"subject": "Big", "html": "<p>" + "x" * 900_000, "text": "y" * 300_000}},
            {},
        )
    ],
    "a retry replays; a changed body is refused": [
        (f"{USER}/sms", SMS, {"idempotency-key": "{key}"}),
        (f"{USER}/sms", SMS, {"idempotency-key": "{key}"}),
        (f"{USER}/sms", {"content": {"text": "changed"}}, {"idempotency-key": "{key}"}),
    ],
    "a key too long": [(f"{USER}/sms", SMS, {"idempotency-key": "k" * 256})],
    "an Orangepill template to a user": [
        (
            f"{USER}/whatsapp",
            {
                "content": {
                    "templateName": "welcome",
                    "templateData": {"body": {"placeholders": ["Ana"]}},
                    "language": "en",
                }
            },
            {},
        )
    ],
    "an Orangepill template without its language": [
        (f"{USER}/whatsapp", {"content": {"templateName": "welcome"}}, {})
    ],
    "an Orangepill template and text": [
        (f"{USER}/whatsapp", {"content": {"templateName": "w", "language": "en", "text": "x"}}, {})
    ],
}


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    body = re.sub(rb'"messageId":"\d+"', b'"messageId":"*"', response.content)
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("idempotent-replayed"),
        int(response.headers.get("content-length", "-1")) == len(response.content),
        body,
    )


async def _run(client: httpx.AsyncClient, case: str) -> list[tuple[Any, ...]]:
    key = uuid.uuid4().hex
    answers = []
    for path, body, headers in CASES[case]:
        sent = {"x-api-key": DEMO_KEY, "content-type": "application/json"}
        sent.update({name: value.replace("{key}", key) for name, value in headers.items()})
        sent = {name: value for name, value in sent.items() if value}
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).read()
        response = await client.post(path, content=content, headers=sent)
        answers.append(_comparable(response))
    return answers


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """Run an ASGI app's lifespan on this event loop (where the requests will run too)."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp: Path = tmp_path_factory.mktemp("fastpath")
    settings = Settings(
        database_url=DATABASES.new_url(tmp),
        demo=True,
        worker_enabled=False,
        # Demo mode on PostgreSQL needs a secret (on SQLite it generates one beside the file).
        secret_key="fast-path-test-secret" if DATABASES.engine == "postgresql" else None,
    )
    upgrade(settings)
    return settings


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_answers_as_the_route_does(settings: Settings, case: str) -> None:
    served = create_app(settings, run_worker=False)

    async def compare() -> None:
        async with _lifespan(served), _client(served) as fast, _client(served.app) as litestar:
            through_fast = await _run(fast, case)
            through_litestar = await _run(litestar, case)
        assert through_fast == through_litestar
        assert through_fast[0][0] in (200, 400, 401, 404, 422)

    asyncio.run(compare())
