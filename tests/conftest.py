"""Test fixtures: real Pigeon servers over loopback HTTP on SQLite or PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.databases import Databases, scalar
from tests.factories import Tenant, create_tenant

ROOT = Path(__file__).resolve().parent.parent
PIGEON = [sys.executable, "-m", "pigeon"]
DEMO_KEY = "AXVubzpwQDU1dzByYM=="
DEMO_ID = "634b56217f6a7b0be52dffbd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A `pigeon serve` process and the environment it was started with."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*PIGEON, "serve", *self.extra_args], env=self.env, stdout=log, stderr=log, cwd=ROOT
        )
        # Generous: on a loaded 2-core machine a cold start (imports, migrations) took over 30 s.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pigeon exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        # A server that never answered would outlive the test run: end it before failing.
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"pigeon did not start:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> bool:
        """SIGTERM, as a supervisor would; True when the shutdown was graceful."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit.
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in (
            self.log_path.read_text()
        )

    def cli(self, *args: str) -> str:
        """Run a `pigeon` CLI command against this server's database."""
        result = subprocess.run(
            [*PIGEON, *args],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"pigeon {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def client(self, api_key: str | None = None) -> httpx.Client:
        headers = {"x-api-key": api_key} if api_key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


DATABASES = Databases(os.environ.get("PIGEON_TEST_DB", "sqlite"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=["sqlite", "postgresql"],
        default=None,
        help="the database engine every Pigeon under test runs on",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--db"):
        DATABASES.engine = config.getoption("--db")


def pytest_report_header(config: pytest.Config) -> str:
    return f"pigeon database engine: {DATABASES.engine}"


@pytest.fixture(scope="session", autouse=True)
def databases() -> Iterator[Databases]:
    """Start the engine's server for the session (nothing to start for SQLite)."""
    DATABASES.start()
    yield DATABASES
    DATABASES.stop()


def server_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_")}
    if "PIGEON_DATABASE_URL" not in overrides:
        overrides["PIGEON_DATABASE_URL"] = DATABASES.new_url(tmp)
    env.update(
        PIGEON_PORT=str(free_port()),
        PIGEON_DEMO="1",
        PIGEON_SANDBOX_REPORT_DELAY="0.05",
        PIGEON_WORKER_POLL_INTERVAL="0.05",
        PIGEON_LOG_LEVEL="INFO",
        # The fake Infobip listens on http://127.0.0.1: tests that check the tenant-URL guard
        # start their server with PIGEON_ALLOW_PRIVATE_URLS="0".
        PIGEON_ALLOW_PRIVATE_URLS="1",
    )
    if DATABASES.engine == "postgresql":
        # Demo mode on PostgreSQL needs a shared secret (on SQLite it generates its own file).
        env["PIGEON_SECRET_KEY"] = "test-suite-postgresql-secret-key"
    env.update(overrides)
    return env


def make_server(tmp: Path, *args: str, **overrides: str) -> Server:
    env = server_env(tmp, **overrides)
    return Server(
        env=env, port=int(env["PIGEON_PORT"]), log_path=tmp / "server.log", extra_args=list(args)
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[Server]:
    """One Pigeon (API and in-process worker) for the session, on its own database."""
    srv = make_server(tmp_path_factory.mktemp("pigeon"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def tenant(server: Server) -> Tenant:
    """A fresh account with an API key, isolated from every other test's data."""
    return create_tenant(server)


@pytest.fixture
def api(server: Server, tenant: Tenant) -> Iterator[httpx.Client]:
    with server.client(tenant.api_key) as client:
        yield client


@pytest.fixture
def demo(server: Server) -> Iterator[httpx.Client]:
    with server.client(DEMO_KEY) as client:
        yield client


def wait_for_final(client: httpx.Client, message_id: str, timeout: float = 10) -> dict[str, Any]:
    """Poll a message until it reaches a final status group."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/v1/messages/{message_id}").json()
        if body["status"]["groupId"] != 1 or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def count_rows(database_url: str, table: str) -> int:
    """How many rows a table of a Pigeon database holds."""
    return int(scalar(database_url, f"SELECT count(*) FROM {table}"))
