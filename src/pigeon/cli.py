"""The `pigeon` command line: serve, worker, db upgrade, accounts, keys, demo, webhooks."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from pigeon.accounts import service as accounts
from pigeon.config import Settings, settings_problem
from pigeon.db.engine import create_engine
from pigeon.errors import PigeonError
from pigeon.logging import configure_logging

app = typer.Typer(
    help="Pigeon: SMS, WhatsApp and Email for Users and Persons.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts (tenants).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"error: {settings_problem(exc)}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


def _server_settings(settings: Settings) -> Settings:
    """Settings with the server's secret (the demo's generated one); exits when it has none."""
    from pigeon.serversecret import SecretKeyRequired, with_server_secret

    try:
        return with_server_secret(settings)
    except SecretKeyRequired as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _not_migrated(conn: AsyncConnection) -> str | None:
    """Why this database cannot be used by this code yet, or None when it is at the head."""
    from pigeon.db.revisions import code_heads, database_heads

    heads = code_heads()
    current = await conn.run_sync(database_heads)
    if current == heads:
        return None
    needs = ", ".join(heads)
    if not current:
        return f"the database has no schema yet (this version needs {needs})"
    return f"the database is at {', '.join(current)}, this version needs {needs}"


def _in_transaction(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction on a migrated database; errors become a message, exit 1."""
    from pigeon.db.errors import unavailable_reason

    database = settings.sqlite_path()
    if database is not None and not database.exists():
        _fail(f"there is no database at {database}: run `pigeon db upgrade` first")

    async def run() -> T:
        engine = create_engine(settings.database_url, timeout=settings.database_timeout_seconds)
        try:
            async with engine.begin() as conn:
                problem = await _not_migrated(conn)
                if problem is not None:
                    _fail(f"{problem}: run `pigeon db upgrade` first")
                return await work(conn)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except PigeonError as exc:
        _fail(exc.detail)
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            raise
        _fail(f"{reason}; nothing was changed, try again later")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for key, value in data.items():
            typer.echo(f"{key}: {value}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (safe to run again)."""
    _upgrade(_settings())
    typer.echo("database is up to date")


def _upgrade(settings: Settings) -> None:
    """Migrate; a database that cannot be written says why (exit 1), not with a traceback."""
    from pigeon.db.migrate import upgrade

    try:
        upgrade(settings)
    except Exception as exc:
        problem = _unavailable(settings, exc)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


@accounts_app.command("create")
def accounts_create(name: str, as_json: JsonOption = False) -> None:
    """Create an account; prints its id and a first API key (shown only once)."""

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        account = await accounts.create_account(conn=conn, name=name)
        key = await accounts.create_key(conn=conn, account_id=account.id)
        return {"account_id": account.id, "name": name, "key_id": key.id, "api_key": key.key}

    _print(_in_transaction(_settings(), work), as_json)


@accounts_app.command("list")
def accounts_list(as_json: JsonOption = False) -> None:
    """List the accounts."""

    async def work(conn: AsyncConnection) -> list[accounts.Account]:
        return await accounts.list_accounts(conn=conn)

    rows = _in_transaction(_settings(), work)
    if as_json:
        typer.echo(json.dumps([{"account_id": a.id, "name": a.name} for a in rows]))
        return
    for account in rows:
        typer.echo(f"{account.id}  {account.name}")


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option("--account", help="The account id.")],
    as_json: JsonOption = False,
) -> None:
    """Create an API key for an account (shown only once)."""

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        key = await accounts.create_key(conn=conn, account_id=account)
        return {"account_id": account, "key_id": key.id, "api_key": key.key}

    _print(_in_transaction(_settings(), work), as_json)


@keys_app.command("list")
def keys_list(
    account: Annotated[
        str | None, typer.Option("--account", help="Only this account's keys.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List API keys: ids, hints, created, revoked (never the keys themselves)."""

    async def work(conn: AsyncConnection) -> list[accounts.KeyInfo]:
        return await accounts.list_keys(conn=conn, account_id=account)

    rows = [
        {
            "key_id": key.id,
            "account_id": key.account_id,
            "hint": f"****{key.hint}",
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in _in_transaction(_settings(), work)
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        revoked = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        typer.echo(
            f"{row['key_id']}  {row['account_id']}  {row['hint']}  "
            f"created {row['created_at']}  {revoked}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by its id."""

    async def work(conn: AsyncConnection) -> None:
        await accounts.revoke_key(conn=conn, key_id=key_id)

    _in_transaction(_settings(), work)
    typer.echo(f"revoked {key_id}")


@app.command("demo")
def demo() -> None:
    """Seed the docs' example tenant (API key AXVubzpwQDU1dzByYM==, which is public)."""
    from pigeon.demo import DEMO_API_KEY, DEMO_OBJECT_ID, seed_demo

    settings = _server_settings(_settings().model_copy(update={"demo": True}))

    async def nothing(conn: AsyncConnection) -> None:
        return None

    _in_transaction(settings, nothing)  # says so if the database is not migrated

    async def run() -> str:
        engine = create_engine(settings.database_url)
        try:
            return await seed_demo(engine, settings)
        finally:
            await engine.dispose()

    account_id = asyncio.run(run())
    _print(
        {
            "account_id": account_id,
            "api_key": DEMO_API_KEY,
            "user_id": DEMO_OBJECT_ID,
            "identity_id": DEMO_OBJECT_ID,
        },
        False,
    )


@app.command("webhooks")
def webhooks() -> None:
    """Print the platform account's delivery-report and inbound URLs to configure in Infobip."""
    from pigeon.extensions.service import webhook_urls
    from pigeon.messages.whatsapp import PLATFORM
    from pigeon.webhooks.tokens import webhook_token

    settings = _server_settings(_settings())

    async def work(conn: AsyncConnection) -> str:
        return await webhook_token(conn=conn, settings=settings, owner=PLATFORM)

    urls = webhook_urls(settings.base_url, PLATFORM, _in_transaction(settings, work))
    _print({"delivery_reports": urls.deliveryReports, "inbound": urls.inbound}, False)


def _prepare_database(settings: Settings, *, migrate: bool) -> None:
    """Migrate (unless told not to) and make sure the database takes writes: a server that
    could only answer 503 stops here with the reason instead."""
    from pigeon.db.errors import check_writable

    if migrate:
        _upgrade_apart(settings)
    try:
        wait = settings.database_timeout_seconds
        asyncio.run(check_writable(settings.database_url, wait_seconds=wait))
    except Exception as exc:
        problem = _unavailable(settings, exc)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1) from None


def _upgrade_apart(settings: Settings) -> None:
    """`pigeon db upgrade` in a child process of its own: run in the server's, what Alembic
    and Mako load would stay in its memory for good (7 MB of it). Forked, not spawned: the
    child needs no executable or module path the server's user may not be allowed to run."""
    child = multiprocessing.get_context("fork").Process(target=_upgrade, args=(settings,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise typer.Exit(max(child.exitcode or 1, 1))  # a signal's negative code: 1


def _unavailable(settings: Settings, exc: Exception) -> str | None:
    """What to tell the operator when `exc` says the database cannot be used, else None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from pigeon.db.errors import unavailable_reason

    reason = unavailable_reason(exc)
    if reason is None:
        return None
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    error = (str(cause).splitlines() or [type(cause).__name__])[0][:200]
    return f"{reason}: Pigeon cannot write to {where} ({error})"


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides PIGEON_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides PIGEON_PORT.")] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run the dispatch worker and webhook deliveries beside each API process.",
        ),
    ] = True,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="API processes sharing the port (PostgreSQL).")
    ] = 1,
    migrate: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first.")
    ] = True,
) -> None:
    """Run the HTTP API (and, by default, its dispatch worker and webhook deliveries beside it)."""
    from pigeon import multiproc

    # Before anything imports prometheus_client: every process then counts into the files
    # (the API processes, and the worker beside each unless it runs in the API's process).
    processes = workers * 3 if worker and _settings().worker_process else workers
    metrics_dir = multiproc.prepare(processes)
    try:
        _serve(host, port, worker=worker, workers=workers, migrate=migrate)
    finally:
        multiproc.remove(metrics_dir)


def _serve(
    host: str | None, port: int | None, *, worker: bool, workers: int, migrate: bool
) -> None:
    import uvicorn

    from pigeon.app import create_app
    from pigeon.http import HttpProtocol
    from pigeon.wsprotocol import StreamProtocol

    settings = _settings()
    updates: dict[str, Any] = {"worker_enabled": worker}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    settings = _server_settings(settings.model_copy(update=updates))
    if workers > 1 and settings.sqlite_path() is not None:
        typer.echo(
            "error: --workers > 1 needs PostgreSQL: SQLite allows one writing server process. "
            "Set PIGEON_DATABASE_URL=postgresql://... or run one process.",
            err=True,
        )
        raise typer.Exit(2)
    _prepare_database(settings, migrate=migrate)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": HttpProtocol,
        "ws": StreamProtocol,  # the stream (/v1/stream): uvicorn's websockets-sansio
        "access_log": False,
        "log_config": None,
        # Pigeon reads neither the client's address nor the request's scheme (its own URLs come
        # from PIGEON_PUBLIC_URL), so uvicorn's X-Forwarded-* rewriting is skipped; and responses
        # do not name the server software.
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
        # Idle connections are closed after it, and a request must arrive whole within it
        # (`pigeon.http`). A proxy in front should close idle upstream connections sooner.
        "timeout_keep_alive": settings.http_timeout_seconds,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Each process builds its own app from the environment: pass the command line's choices on.
    os.environ.update(
        PIGEON_HOST=settings.host,
        PIGEON_PORT=str(settings.port),
        PIGEON_WORKER_ENABLED="1" if worker else "0",
    )
    uvicorn.run("pigeon.app:app_from_environment", factory=True, workers=workers, **options)


@app.command("worker")
def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Dispatch loops in this process.")
    ] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", min=1, max=65535, help="Serve GET /metrics on 127.0.0.1:PORT."
        ),
    ] = None,
) -> None:
    """Run only the dispatch worker (stops cleanly on SIGTERM or Ctrl-C)."""
    from pigeon import multiproc

    multiproc.own_metrics_only()  # before prometheus_client is imported
    from pigeon.dispatch.process import run_worker
    from pigeon.dispatch.worker import tune_gc_for_batches

    settings = _server_settings(_settings())
    tune_gc_for_batches()
    asyncio.run(run_worker(settings, concurrency=concurrency, metrics_port=metrics_port))


def main() -> None:
    """Entry point of the `pigeon` command."""
    app()
