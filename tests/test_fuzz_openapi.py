"""Schemathesis over every operation of Pigeon's OpenAPI document, against a real server.

A `pigeon serve` of its own (demo tenant, its own database) is sent the document's examples,
then coverage cases (boundaries and every way to break each field), then generated inputs,
with the demo key. Every answer must be a non-5xx, with a status, content type, headers and
body as the document says. Two checks are left out, with their reasons: the document cannot
hold every rule (phone numbers, a User's existence), so a schema-valid request may fairly get
a 422 (`positive_data_acceptance`); and Litestar converts JSON leniently (`0` is false, a
number is a timestamp), so a schema-invalid request may be accepted (`negative_data_rejection`).

Bounded to a few examples per operation and phase (about a minute on SQLite). It runs on
SQLite only: the requests exercise the HTTP layer, validation and the rules, which are the
same on both engines, and a second run would double the time `make test` spends here;
PostgreSQL-only hazards (NUL characters in text) have their own tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from litestar import Litestar
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pigeon.app import create_app
from pigeon.config import Settings
from tests.conftest import DATABASES, DEMO_KEY, Server, make_server
from tests.databases import Databases

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15  # per operation and phase


@pytest.fixture(scope="module")
def fuzzed_server(
    tmp_path_factory: pytest.TempPathFactory, databases: Databases
) -> Iterator[Server]:
    if DATABASES.engine != "sqlite":
        pytest.skip("the fuzzer runs on SQLite only (see the module's docstring)")
    server = make_server(tmp_path_factory.mktemp("fuzz"), PIGEON_LOG_LEVEL="WARNING")
    server.start()
    yield server
    server.stop()


def _document() -> dict[str, Any]:
    """The OpenAPI document as `pigeon serve` builds it (the server checks they are equal)."""
    app: Any = create_app(Settings(database_url="sqlite:///unused.db"), run_worker=False)
    while not isinstance(app, Litestar):  # the ASGI wrappers in front of it
        app = app.app
    return msgspec.to_builtins(app.openapi_schema.to_schema())


DOCUMENT = _document()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 18,
        "headers": {"x-api-key": DEMO_KEY},
        # No example database: a run depends on the seed alone, and leaves no files behind.
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_server_serves_the_fuzzed_document(fuzzed_server: Server) -> None:
    with fuzzed_server.client() as client:
        assert client.get("/openapi.json").json() == DOCUMENT


def _call(case: Any, server: Server) -> None:
    case.call_and_validate(
        base_url=server.base_url, headers={"x-api-key": DEMO_KEY}, checks=CHECKS, timeout=30
    )


@schema.exclude(method="DELETE").parametrize()
def test_every_operation_answers_as_documented_without_server_errors(
    case: Any, fuzzed_server: Server
) -> None:
    _call(case, fuzzed_server)


# Last, since their examples delete the demo tenant's User and Identity the sends use.
@schema.include(method="DELETE").parametrize()
def test_every_delete_answers_as_documented_without_server_errors(
    case: Any, fuzzed_server: Server
) -> None:
    _call(case, fuzzed_server)


def test_the_fuzzed_server_logged_no_unhandled_error(fuzzed_server: Server) -> None:
    log = Path(fuzzed_server.log_path).read_text()
    assert "unhandled error" not in log, log[-4000:]
