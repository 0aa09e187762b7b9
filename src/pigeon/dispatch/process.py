"""The dispatch worker in a process of its own: `pigeon worker`, and `pigeon serve`'s worker.

A Python process runs one thread at a time. With the worker in the API's process, every
message's sending and status changes took turns with the accepts on that one thread: the
default `pigeon serve` accepted and delivered about 1,200 messages a second where the API
alone accepted 3,900. So `pigeon serve` runs its worker as a child process (`WorkerProcess`),
on the machine's other core, and the two take turns only on the database's writes
(`db.writer.ProcessTurns` on SQLite, row locks on PostgreSQL).

The tenants' webhook deliveries run in a second child by default (`PIGEON_DELIVERY_PROCESS`):
beside the dispatch in one process, each event's signed POST and its attempt's record took
turns with the dispatch rounds on that process's one thread, and the dispatch then held the
database's write turn longer, with the accepts waiting behind it (with an endpoint taking
every event, `pigeon serve` accepted 960 sends a second with the deliveries in the worker's
process, 1,180-1,250 with them in their own).

Each child is tied to its parent by a pipe: a byte on it wakes the dispatch worker at once
when a message is accepted (instead of at its next poll), and its end of file, however the
parent ended, even killed, stops the child after its round. A child that dies is started
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from pigeon.config import Settings

if TYPE_CHECKING:
    from pigeon.dispatch.worker import Worker

log = structlog.get_logger("pigeon.worker")

RESTART_FIRST = 1.0  # seconds before a dead worker is started again, doubling ...
RESTART_MAX = 30.0  # ... up to this
STOP_GRACE = 30.0  # seconds a stopping worker has to finish its round before SIGKILL
# What a child runs: the dispatch worker (messages, CDP sync), the webhook deliveries, or both.
ROLES = ("dispatch", "deliveries", "all")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"a worker's role is one of {', '.join(ROLES)}, not {role!r}")


async def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    metrics_port: int | None = None,
    parent_fd: int | None = None,
    role: str = "all",
) -> None:
    """Dispatch (messages, CDP sync) and webhook deliveries, or one of them (`role`), until
    SIGTERM or SIGINT; with `parent_fd`, also until that pipe ends, waking the dispatch at
    once on each byte read from it."""
    _check_role(role)
    from pigeon import metrics
    from pigeon.db.engine import create_engine, reader_for
    from pigeon.db.writer import writer_for
    from pigeon.dispatch.deliveries import DeliveryWorker
    from pigeon.dispatch.registry import ProviderRegistry
    from pigeon.dispatch.worker import Worker
    from pigeon.serversecret import prepare_secrets

    engine = create_engine(settings.database_url)
    await prepare_secrets(engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A child of `pigeon serve` is stopped by its parent (its pipe, or SIGTERM), not by the
    # terminal's Ctrl-C.
    for signum in (signal.SIGTERM,) if parent_fd is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Only what the role runs is built (the deliveries' HTTP client loads the CA bundle).
    dispatching, posting = role != "deliveries", role != "dispatch"
    registry = ProviderRegistry(settings) if dispatching else None
    writer = writer_for(engine, settings.database_url)
    # What the worker and the deliveries read, outside the write transactions (status changes
    # are decided on it).
    reader = reader_for(engine, settings.database_url)
    loops = [
        Worker(engine, settings, registry, writer=writer, reader=reader)
        for _ in range(concurrency if dispatching else 0)
    ]
    if parent_fd is not None:
        os.set_blocking(parent_fd, False)
        loop.add_reader(parent_fd, _on_parent, parent_fd, loops, stop)
    exporter = None
    if metrics_port is not None:
        exporter = await metrics.serve(engine, host="127.0.0.1", port=metrics_port)
    deliveries = DeliveryWorker(engine, settings, reader=reader, writer=writer) if posting else None
    runs = [w.run(stop) for w in loops]
    if deliveries is not None:
        runs.append(deliveries.run(stop))
    try:
        await asyncio.gather(*runs)
    finally:
        if parent_fd is not None:
            loop.remove_reader(parent_fd)
        if exporter is not None:
            exporter.close()
        if deliveries is not None:
            await deliveries.aclose()
        if registry is not None:
            await registry.aclose()
        await writer.close()
        if reader is not engine:
            await reader.dispose()
        await engine.dispose()
        metrics.process_exiting()


def _on_parent(fd: int, loops: Sequence[Worker], stop: asyncio.Event) -> None:
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return
    if not data:  # the parent is gone, or stopping
        stop.set()
        return
    for worker in loops:
        worker.wake.set()


class WorkerProcess:
    """`pigeon serve`'s worker: a child process kept running beside the API, running the
    dispatch, the webhook deliveries or both (`role`, one of ROLES).

    Its settings are the parent's environment (PIGEON_*), with the server's own host and
    port (the webhook URLs it gives providers name them).
    """

    def __init__(self, settings: Settings, role: str = "all") -> None:
        _check_role(role)
        self._settings = settings
        self.role = role
        self._wake_fd: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the child and keep it running until `stop`."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    def wake(self) -> None:
        """Tell the worker a message is waiting (never blocks: a full pipe is awake anyway)."""
        if self._wake_fd is not None:
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._wake_fd, b"\0")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def stop(self) -> None:
        """End the child: its pipe closes, it finishes its round and exits; SIGKILL after
        STOP_GRACE seconds."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._close_pipe()
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("worker did not stop in time: killed", pid=process.pid, role=self.role)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        env = {
            **os.environ,
            "PIGEON_HOST": self._settings.host,
            "PIGEON_PORT": str(self._settings.port),
        }
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pigeon.dispatch.process",
                str(read_fd),
                self.role,
                pass_fds=(read_fd,),
                env=env,
                # Out of the terminal's process group: Ctrl-C stops the API, which stops its
                # worker after the round in progress.
                start_new_session=True,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._close_pipe()
        self._wake_fd = write_fd
        log.info("worker process started", pid=self._process.pid, role=self.role)

    async def _supervise(self) -> None:
        pause = RESTART_FIRST
        while not self._stopping:
            assert self._process is not None
            started = asyncio.get_running_loop().time()
            code = await self._process.wait()
            if self._stopping:
                return
            if asyncio.get_running_loop().time() - started > RESTART_MAX:
                pause = RESTART_FIRST  # it had been running well: not a crash loop
            log.error(
                "worker process exited: starting it again", code=code, after=pause, role=self.role
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX)
            try:
                await self._spawn()
            except OSError:
                log.exception("worker process could not be started")

    def _close_pipe(self) -> None:
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None


def main(argv: Sequence[str]) -> None:
    """The child's entry point: `python -m pigeon.dispatch.process FD [ROLE]`."""
    from pigeon.dispatch.worker import tune_gc_for_batches
    from pigeon.logging import configure_logging
    from pigeon.serversecret import with_server_secret

    role = argv[1] if len(argv) > 1 else "all"
    settings = with_server_secret(Settings())
    named = "deliveries" if role == "deliveries" else "worker"
    configure_logging(settings.log_level, json=settings.log_json, process=named)
    tune_gc_for_batches()
    asyncio.run(run_worker(settings, parent_fd=int(argv[0]), role=role))


if __name__ == "__main__":
    main(sys.argv[1:])
