"""Runs on one artifact store never share writable state: the second waits for the first.

Two locks per store, both OS file locks (released by the kernel when a process dies, even by
`kill -9`, so a crashed run never leaves the store locked):

- the *run* lock (`<run root>/.tamp-run.lock`) covers a run's own folders (allocation, masks,
  pruned, reports, metrics) and its MLflow logging: a whole `tamp pipeline`, flow run or stage holds
  it, so no run reads another's allocation between its own stages or logs another's metrics;
- the *shared* lock (`<shared root>/.tamp-shared.lock`) covers calibration and statistics, which
  a sweep's points share: held only while one of those stages runs or checks its record.

A sweep gives each point its own run root, so points started in parallel (two flows, two CLIs) only
wait on the shared stages. Locks are re-entrant within a process (a flow holds the run lock and its stages take it
again); across processes the second caller waits and says so once. Why not per-run folders keyed by
fingerprint: DVC needs fixed output paths, and one rule (wait) for every driver is simpler to trust.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tampkit.core.ranks import current_ranks
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.table import SHARED_STAGES

log = logging.getLogger("tampkit")

RUN_LOCK = ".tamp-run.lock"
SHARED_LOCK = ".tamp-shared.lock"


_guard = threading.Lock()
_held: dict[str, tuple[FileLock, int]] = {}


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    key = str(path.resolve())
    with _guard:
        held = _held.get(key)
        if held is not None:
            _held[key] = (held[0], held[1] + 1)
    if held is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(key, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("another run holds %s: waiting for it to finish", path)
            lock.acquire()
        with _guard:
            _held[key] = (lock, 1)
    try:
        yield
    finally:
        with _guard:
            lock, count = _held[key]
            if count == 1:
                del _held[key]
                lock.release()
            else:
                _held[key] = (lock, count - 1)


def run_root(layout: Layout) -> Path:
    """Where a run's own folders (and its lock) are."""
    return layout.allocation.parent


def shared_root(layout: Layout) -> Path:
    """Where the shared stages' folders (and their lock) are."""
    return layout.calibration.parent


@contextmanager
def run_lock(layout: Layout) -> Iterator[None]:
    """Hold the run's own folders (and the MLflow logging of them) for the duration. Under torchrun
    rank 0 holds it for all ranks (the others write nothing, and waiting on it would deadlock)."""
    if not current_ranks().is_main:
        yield
        return
    with _file_lock(run_root(layout) / RUN_LOCK):
        yield


@contextmanager
def stage_lock(stage: str, layout: Layout) -> Iterator[None]:
    """The lock a stage needs: the shared one for calibration and statistics, else the run's."""
    path = shared_root(layout) / SHARED_LOCK if stage in SHARED_STAGES else run_root(layout) / RUN_LOCK
    with _file_lock(path):
        yield
