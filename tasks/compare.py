"""Rows for `tamp compare --mlflow`: the latest parent run of each (model, method, sparsity,
structure) in the MLflow experiment `tamp`."""

from __future__ import annotations

from typing import Any

from tampkit.compare import result_row
from tasks.tracking import EXPERIMENT, tracking_uri


def rows_from_mlflow(uri: str | None = None) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    latest: dict[tuple, dict[str, Any]] = {}
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"], max_results=5000)
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags or "prune.method" not in run.data.params:
            continue
        p = run.data.params
        row = result_row(p["model.name"], p["prune.method"], float(p["prune.sparsity"]), p["prune.structure"],
                         run.data.metrics) | {"source": run.info.run_id}
        latest[(row["model"], row["method"], row["sparsity"], row["structure"])] = row
    return list(latest.values())
