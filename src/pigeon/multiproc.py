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
    """Choose and empty the directory the API processes count into, set in the environment
    they inherit. With PROMETHEUS_MULTIPROC_DIR set by the operator: that one, emptied and kept
    (None returned). Otherwise, for more than one process, a fresh temporary one, returned for
    the caller to `remove` at exit; one process keeps its metrics in memory (None)."""
    chosen = os.environ.get(ENV)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's counts are not this run's
            stale.unlink()
        return None
    if workers <= 1:
        return None
    created = Path(tempfile.mkdtemp(prefix="pigeon-metrics-"))
    os.environ[ENV] = str(created)
    return created


def own_metrics_only() -> None:
    """For a process that serves its own metrics (`pigeon worker --metrics-port`): in memory,
    whatever the environment says, so its scrape is not the API processes' sum."""
    os.environ.pop(ENV, None)


def remove(path: Path | None) -> None:
    """Remove the temporary metrics directory `prepare` created."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
