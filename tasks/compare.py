"""Rows for `tamp compare --mlflow`: the latest parent run of each (model, method, sparsity,
structure) in the MLflow experiment `tamp`. A parent run that a fully cached rerun tagged again
(`last_seen`, see tasks/tracking.py) counts as seen then. Nested runs (stages, `layers`) are skipped."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tampkit.methods.presets import FROM_METHOD, label, resolve
from tampkit.reporting.compare import result_row
from tasks.tracking import EXPERIMENT, tracking_uri


def _seen_ms(run: Any) -> int:
    """When the run's result was last produced: its start, or its `last_seen` tag if later."""
    seen = run.info.start_time or 0
    try:
        seen = max(seen, int(datetime.fromisoformat(run.data.tags["last_seen"]).timestamp() * 1000))
    except (KeyError, ValueError):
        pass
    return seen


def rows_from_mlflow(uri: str | None = None) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    latest: dict[tuple, dict[str, Any]] = {}
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"], max_results=5000)
    for run in sorted(runs, key=_seen_ms):
        if "mlflow.parentRunId" in run.data.tags or "prune.method" not in run.data.params:
            continue
        p = run.data.params
        method = label(resolve(p["prune.method"], p.get("prune.scorer", FROM_METHOD), p.get("prune.allocation", FROM_METHOD)))
        row = result_row(p["model.name"], method, float(p["prune.sparsity"]), p["prune.structure"],
                         run.data.metrics) | {"source": run.info.run_id}
        latest[(row["model"], row["method"], row["sparsity"], row["structure"])] = row
    return list(latest.values())
