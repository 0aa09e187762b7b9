"""`make run` installs only the runtime dependencies, and they are enough to run Pigeon.

The Makefile keeps two stamps: `make run` installs `pip install -e .`, while `make test`,
`make lint`, `make typecheck` and `make bench` install `.[dev]`. Checked with `make -n` on a
venv path of the test's own (nothing is installed). Then `pigeon db upgrade` and `pigeon serve`
run in a process that cannot import any module outside pyproject's runtime dependencies (and
their own requirements): a module only the dev tools bring (pytest, schemathesis, ...) would
make the server fail to start here, as it would after a runtime-only install.
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import DEMO_ID, DEMO_KEY, ROOT, server_env, wait_for_final

RUNTIME_ONLY = "pip install --quiet -e ."
WITH_DEV = "pip install --quiet -e '.[dev]'"
# What every Python 3.11 venv has before anything is installed into it.
IN_EVERY_VENV = {"pip", "setuptools"}


def _make(venv: Path, *targets: str) -> str:
    result = subprocess.run(
        ["make", "-n", f"VENV={venv}", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def _installs(plan: str) -> list[str]:
    return [line.split("/bin/", 1)[1] for line in plan.splitlines() if "/bin/pip install" in line]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv path that looks created (its python exists) and has nothing installed."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    return tmp_path / "venv"


def test_make_run_installs_only_the_runtime_dependencies(venv: Path) -> None:
    assert _installs(_make(venv, "run")) == [RUNTIME_ONLY]


@pytest.mark.parametrize("target", ["test", "lint", "typecheck", "bench"])
def test_the_dev_targets_install_the_dev_tools(venv: Path, target: str) -> None:
    assert _installs(_make(venv, target)) == [WITH_DEV]


def test_make_test_after_make_run_adds_the_dev_tools(venv: Path) -> None:
    (venv / ".installed-run").touch()  # as `make run` leaves it

    assert _installs(_make(venv, "run")) == []
    assert _installs(_make(venv, "test")) == [WITH_DEV]


def test_make_run_after_make_test_installs_nothing(venv: Path) -> None:
    for stamp in (".installed-run", ".installed-dev"):
        (venv / stamp).touch()

    assert _installs(_make(venv, "run")) == []
    assert _installs(_make(venv, "test")) == []


def _runtime_distributions() -> set[str]:
    """pigeon and everything its runtime requirements pull in, extras and markers applied."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("pigeon", frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in seen} | IN_EVERY_VENV


def _modules_outside(allowed: set[str]) -> set[str]:
    """Top-level modules that only distributions outside `allowed` provide."""
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in allowed for d in dists)
    }


# Runs before anything of Pigeon's: an import of a blocked top-level module fails as it would
# in a venv where it was never installed.
BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not a runtime dependency)")
        return None
for name in list(sys.modules):
    if name.partition(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Blocker())
sys.argv = ["pigeon", *{args!r}]
runpy.run_module("pigeon", run_name="__main__")
"""


def _runtime_only(*args: str) -> list[str]:
    blocked = sorted(_modules_outside(_runtime_distributions()))
    return [sys.executable, "-c", BLOCKER.format(blocked=blocked, args=list(args))]


def test_the_blocker_blocks_the_dev_tools() -> None:
    blocked = _modules_outside(_runtime_distributions())

    assert {"pytest", "schemathesis", "selenium", "mypy", "twilio", "aiosmtpd"} <= blocked
    assert not {"litestar", "uvicorn", "sqlalchemy", "swagger_ui_bundle"} & blocked
    setup = BLOCKER.format(blocked=sorted(blocked), args=[]).split("runpy.run_module")[0]
    probe = subprocess.run(
        [sys.executable, "-c", setup + "import pytest"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "not a runtime dependency" in probe.stderr


def test_pigeon_runs_on_its_runtime_dependencies_alone(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    upgrade = subprocess.run(
        _runtime_only("db", "upgrade"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr[-4000:]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _runtime_only("serve"), env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{env['PIGEON_PORT']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"x-api-key": DEMO_KEY}, timeout=30) as client:
            docs = client.get("/docs")
            assert docs.status_code == 200
            assert "swagger-ui-bundle.js" in docs.text
            asset = docs.text.split('src="', 1)[1].split('"', 1)[0]
            assert client.get(asset).status_code == 200
            assert client.get("/metrics").status_code == 200
            sent = client.post(
                f"/v1/users/{DEMO_ID}/message/sms", json={"content": {"text": "runtime only"}}
            )
            assert sent.status_code == 200, sent.text
            message = wait_for_final(client, sent.json()["messages"][0]["messageId"])
            assert message["status"]["groupName"] == "DELIVERED"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "not a runtime dependency" not in log.read_text()
