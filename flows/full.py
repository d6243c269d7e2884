"""Flow `tamp`: the six stages as cached tasks, one MLflow run, a markdown report.

    prefect deployment run tamp/full -p overrides='{"prune.sparsity": 0.6}' --watch
    prefect deployment run tamp/full -p refresh='["evaluate"]'      # rerun a stage on demand

The whole run (stages and MLflow logging) holds the store's run lock: a second run on the same
store waits for this one instead of reading or overwriting its outputs halfway.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tampkit.pipeline.params import load_params
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.table import STAGES
from tampkit.pipeline.layout import Layout
from tasks.parameters import Overrides, as_dict
from tasks.stages import layout_dict, log_to_mlflow, run_stage_tasks
from tasks.summary import publish_markdown, run_markdown


@flow(name="tamp", log_prints=True)
def full(params_file: str = "params.yaml", workdir: str = "artifacts", overrides: Overrides | None = None,  # type: ignore[valid-type]
         run_name: str | None = None, refresh: list[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage for params.yaml + `overrides` (dotted keys, as `dvc exp run -S`);
    stages named in `refresh` rerun whatever their cache says."""
    params = load_params(params_file, as_dict(overrides))
    layout = Layout.under(workdir)
    stages: dict[str, dict[str, Any]] = {}
    with run_lock(layout):  # a wait for another run is a warning in this run's log
        try:
            run_stage_tasks(params, layout, STAGES, tuple(refresh or ()), done=stages)
        finally:  # a failed run still leaves its report: what ran, what failed and why
            publish_markdown(run_markdown(params, layout, stages), "tamp-run")
        reused = {s: v["state"] == "Cached" or bool(v["record"].get("reused")) for s, v in stages.items()}
        run_id = log_to_mlflow(params.to_dict(), layout_dict(layout), list(STAGES), reused, run_name,
                               {"driver": "prefect"})
    return {"states": {s: v["state"] for s, v in stages.items()}, "mlflow_run_id": run_id}


if __name__ == "__main__":
    full()
