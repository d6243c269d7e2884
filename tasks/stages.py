"""One Prefect task per pipeline stage (from the stage table), each a thin call of
`tampkit.pipeline.run.run_stage`.

Inputs are the stage name, the params (a plain dict), the store's folders (strings) and the
fingerprints of the upstream stages, never tensors or models. The cache key is those inputs (the
params only through the keys the stage reads: a new sparsity keeps calibration and statistics
cached), the task's source and the stage's fingerprint (which also hashes the library code). The
flow refreshes a task's cache when the store no longer holds that stage's result, so a cached
state never stands for files that are gone.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext

from tampkit.core.errors import UsageError
from tampkit.core.log import log as library_log
from tampkit.pipeline.params import Params, params_from_dict
from tampkit.pipeline.run import run_stage, stage_fingerprint, up_to_date, upstream_records
from tampkit.pipeline.table import STAGE, STAGES, UPSTREAM
from tampkit.pipeline.layout import Layout
from tampkit.store.records import read_record


def layout_dict(layout: Layout) -> dict[str, str]:
    """The store's folders as strings (a task input Prefect can hash and serialise)."""
    return {name: str(path) for name, path in vars(layout).items()}


def _expected(stage: str, params: Params, layout: Layout) -> str | None:
    """The fingerprint the stage's record will have (None while an upstream record is missing)."""
    try:
        return stage_fingerprint(stage, params, upstream_records(stage, layout, params))
    except UsageError:
        return None


def _fingerprint_key(_context: TaskRunContext, inputs: dict[str, Any]) -> str:
    layout = Layout(**{k: Path(v) for k, v in inputs["layout"].items()})
    return _expected(inputs["stage"], params_from_dict(inputs["params"]), layout) or f"unknown-{uuid.uuid4()}"


CACHE_POLICY = (INPUTS - "params" - "force") + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_fingerprint_key)


class _ToPrefect(logging.Handler):
    """Sends the library's records (logger "tampkit") to the Prefect run logger of the context they
    are raised in: the task run's inside a task, the flow run's in the flow body (e.g. a wait for
    another run's lock), nothing outside a run."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            target = get_run_logger()
        except MissingContextError:
            return
        target.log(record.levelno, record.getMessage())


def forward_library_logs() -> None:
    """Install the forwarding once per process (idempotent)."""
    if not any(isinstance(h, _ToPrefect) for h in library_log.handlers):
        library_log.addHandler(_ToPrefect(logging.INFO))


forward_library_logs()


def _run(stage: str, params: dict[str, Any], layout: dict[str, str], upstream: dict[str, str],
         force: bool = False) -> dict[str, Any]:
    """`upstream` (fingerprints) is only a cache input: run_stage reads the records itself."""
    del upstream
    record = run_stage(stage, params_from_dict(params), Layout(**{k: Path(v) for k, v in layout.items()}), force=force)
    return {k: v for k, v in record.items() if k not in ("params",)}


def _stage_task(stage: str) -> Any:
    return task(name=stage, cache_policy=CACHE_POLICY, persist_result=True, result_serializer="json",
                retries=STAGE[stage].retries, retry_delay_seconds=5)(_run)


STAGE_TASKS = {stage: _stage_task(stage) for stage in STAGES}


@task(name="mlflow", cache_policy=NO_CACHE)
def log_to_mlflow(params: dict[str, Any], layout: dict[str, str], stages: list[str], reused: dict[str, bool],
                  run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """One MLflow parent run (nested run per stage) for the run in `layout`; returns its id."""
    from tasks.tracking import log_pipeline_run

    return log_pipeline_run(params_from_dict(params), Layout(**{k: Path(v) for k, v in layout.items()}), run_name,
                            tuple(stages), tags, reused)


def run_stage_tasks(params: Params, layout: Layout, stages: tuple[str, ...], refresh: tuple[str, ...] = (),
                    done: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Call each stage's task in order inside a flow; per stage its state name and record (also
    filled into `done` as it goes, so a caller can report a run that failed halfway; a failed
    stage's entry holds the record it left on disk). Stages in `refresh` rerun from scratch
    whatever their cache and record say."""
    unknown = [s for s in refresh if s not in STAGES]
    if unknown:
        raise UsageError("refresh", f"unknown stage '{unknown[0]}'", STAGES)
    done = {} if done is None else done
    fingerprints: dict[str, str] = {}
    for stage in stages:
        upstream = {u: fingerprints[u] if u in fingerprints else (read_record(layout.folder(u)) or {}).get("fingerprint")
                    for u in UPSTREAM[stage]}
        on_disk = up_to_date(stage, params, layout) is not None
        # A cached result is only as good as the files it describes: refresh it when they are gone.
        forced = stage in refresh
        task_ = STAGE_TASKS[stage] if on_disk and not forced else STAGE_TASKS[stage].with_options(refresh_cache=True)
        state = task_(stage, params.to_dict(), layout_dict(layout), upstream, forced, return_state=True)
        if not state.is_completed():
            done[stage] = {"state": state.name, "record": read_record(layout.folder(stage)) or {}}
        record = state.result()  # raises the stage's error when the task failed
        fingerprints[stage] = record["fingerprint"]
        done[stage] = {"state": state.name, "record": record}
    return done
