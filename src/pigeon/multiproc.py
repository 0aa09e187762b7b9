"""Where `pigeon serve --workers N` processes keep their metrics, set up before any is started.

prometheus_client decides how a process stores its values when it is first imported: in its
own memory, or (with PROMETHEUS_MULTIPROC_DIR set) in files that any process of the group can
add up when scraped. So the directory is chosen and emptied here, by the command that starts
the processes, before anything imports prometheus_client; this module must not import it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(workers: int) -> Path | None:
    """For more than one process: choose and empty the metrics directory the processes inherit
    through the environment. A fresh temporary one, returned so that the caller removes it at
    exit, unless the operator set PROMETHEUS_MULTIPROC_DIR (emptied, kept, None returned). One
    process keeps its metrics in memory: nothing to do, None."""
    if workers <= 1:
        return None
    chosen = os.environ.get(ENV)
    if not chosen:
        created = Path(tempfile.mkdtemp(prefix="pigeon-metrics-"))
        os.environ[ENV] = str(created)
        return created
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # a previous run's counts are not this run's
        stale.unlink()
    return None


def remove(path: Path | None) -> None:
    """Remove the temporary metrics directory `prepare` created."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
