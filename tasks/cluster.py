"""The Dask side of a sweep (`flows/sweep.py` with `dask=True`): the task runner, the Prefect API
and the MLflow store its workers report to, and what a worker checks and sets before a point.

Why the runner is built here, at run time, and entered in the flow body rather than given to the
flow (`@flow(task_runner=...)` / `sweep.with_options(task_runner=...)`):
  - the shared stages (calibration, statistics) run first in the flow's process; the workers start
    only afterwards, so none idles (holding memory) through calibration;
  - the LocalCluster is sized from the number of points, and the Prefect API the workers must use is
    known only once the flow runs (see `worker_api_url`);
  - a task submitted to Dask re-enters its flow's task runner on the worker (Prefect's
    `hydrated_context` duplicates it): a flow whose own runner stays the default thread pool keeps
    the workers from each opening a Dask client of their own.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tampkit.core.errors import UsageError

#: Each LocalCluster worker process runs one point at a time (one Dask thread): a point is a
#: whole pruning run, parallel inside through torch, and two in one process would share its
#: torch thread pool and memory for nothing.
THREADS_PER_WORKER = 1


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or `taskset` narrows;
    `os.cpu_count()` counts the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_cluster_shape(points: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per worker) for a LocalCluster: `workers` (default: the
    cores, never more than the points), and `threads` (default: the cores shared out among them, at
    least one each)."""
    for name, value in (("dask_workers", workers), ("dask_threads", threads)):
        if value is not None and value < 1:
            raise UsageError(name, f"{value}", "1 or more")
    n = max(1, min(workers or cores(), points))
    return n, threads or max(1, cores() // n)


def dask_task_runner(address: str | None, workers: int, torch_threads: int) -> Any:
    """The runner: a connection to the scheduler at `address`, else a LocalCluster of `workers`
    processes, each one Dask thread and `torch_threads` torch/OpenMP threads.

    LocalCluster settings and why: `processes=True` (torch holds the GIL in places, and a point's
    model must not share memory with another's); `memory_limit=0`, no Dask memory management: Dask
    counts its own data, not a model torch loaded, and its default share (RAM / workers, a worker
    killed at 95%) would kill a point whose model alone exceeds the share while the others are
    small; RAM needed is the workers times one point's peak. `dashboard_address=":0"`: a free port
    (logged), so two sweeps on one machine do not collide on 8787. OMP/MKL threads are set in the
    worker's environment before torch is imported there (Dask's Nanny sets them to 1 by default).
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    threads = str(torch_threads)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": workers, "threads_per_worker": THREADS_PER_WORKER, "processes": True, "memory_limit": 0,
        "dashboard_address": ":0",
        "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}})


@contextmanager
def environment_kept() -> Iterator[None]:
    """Undo, on the way out, what the block changed in this process's environment: a LocalCluster's
    Nanny writes the environment it prepares for its workers (`distributed.nanny.pre-spawn-environ`:
    OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_ ...) into the process that starts it,
    here the flow's, where it would reach every subprocess the flow starts later."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_api_url(address: str | None) -> tuple[str | None, str | None]:
    """(the Prefect API URL the workers must use, a warning or None).

    With `PREFECT_API_URL` set, that (the flow passes its settings to each task it submits). Without
    it the flow runs on a temporary server (127.0.0.1, a port of its own), and a worker given no URL
    would start a temporary server of its own on the same database: one more server process per
    worker (measured here: a toy flow of four 1-s tasks on two workers took 27 s instead of 13 s) and task runs spread over
    servers. So the workers get this flow's temporary server: fine for a LocalCluster or a scheduler on
    this machine; workers elsewhere cannot reach 127.0.0.1, hence the warning (run a Prefect server
    they can reach and set `PREFECT_API_URL`, see docs/scale.md)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value(), None
    url = str(get_client(sync_client=True).api_url)
    warning = None
    if address and not is_loopback(address):
        warning = (f"the flow runs on a temporary Prefect server ({url}) that workers on other machines cannot "
                   "reach: start `prefect server start --host 0.0.0.0` and set PREFECT_API_URL (docs/scale.md)")
    return url, warning


def absolute_tracking_uri(uri: str) -> str:
    """A SQLite URI with a relative path made absolute (SQLite resolves it from the cwd, and a
    worker's may differ); any other URI as given."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        database = uri[len(prefix):]
        if database and database != ":memory:" and not database.startswith("/"):
            return prefix + str(Path(database).resolve())
    return uri


def enter_flow_folder(cwd: str, shared_root: str) -> None:
    """On a worker: fail early, naming the worker, when it does not see the flow's folders, and
    work from the flow's working directory, so that params naming a relative path (a model folder,
    a calibration file) mean the same file there. The change is not undone: the process is a Dask
    worker, and every point of a sweep asks for the same folder."""
    for folder in (cwd, shared_root):
        if not Path(folder).is_dir():
            raise UsageError("dask", f"worker {socket.gethostname()} (pid {os.getpid()}) does not see {folder}",
                             "the repository, WORKDIR and the MLflow store on a filesystem every worker mounts "
                             "at the same path")
    if os.getcwd() != cwd:
        os.chdir(cwd)
