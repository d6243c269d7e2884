"""MLflow logging of one pipeline run, from the stage records and files in the artifact store.

One parent run per pipeline run, a nested run per stage (its params, fingerprint, seconds, whether
it was reused); on the parent: every param (dotted keys), per-layer allocated and achieved sparsity
(and mean diversity with DAS) as metric series with step = layer index, the evaluation metrics,
the report, plots and params.yaml as artifacts, tags for the git commit and the params hash.

Logging reads what the stages wrote, so the Prefect flows and DVC (`python -m tasks.tracking`, the
`track` stage) log the same things. The store is `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db`
in the working directory, with artifacts in ./mlartifacts.

Run as a module: `python -m tasks.tracking [--params params.yaml] [--workdir artifacts]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tampkit.errors import UsageError
from tampkit.params import Params, load_params
from tampkit.pipeline import LAYERS_CSV, METRICS_FILE
from tampkit.stage_io import STAGES, Layout, read_record

EXPERIMENT = "tamp"
DEFAULT_URI = "sqlite:///mlflow.db"
#: Per-layer series logged on the parent run (column of reports/layers.csv -> metric name).
LAYER_SERIES = {"allocated_sparsity": "layer_allocated_sparsity", "achieved_sparsity": "layer_achieved_sparsity",
                "mean_diversity": "layer_mean_diversity"}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def clean_metric_name(name: str) -> str:
    """MLflow allows letters, digits, `_ - . / :` and spaces; lmms-eval keys carry commas
    (`exact_match,none`), so everything else becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name).strip("_") or "metric"


def git_commit(cwd: Path | None = None) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = Path("mlartifacts").resolve()
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def log_pipeline_run(params: Params, layout: Layout, run_name: str | None = None,
                     stages: tuple[str, ...] = STAGES, extra_tags: dict[str, str] | None = None,
                     reused: dict[str, bool] | None = None) -> str:
    """Log the finished run in `layout`; returns the parent run id. `reused`: per stage, whether
    this run took it from a cache (Prefect's or the store's) instead of running it."""
    from mlflow.entities import Metric, Param, RunTag

    records = {stage: read_record(layout.folder(stage)) for stage in stages}
    missing = [s for s, r in records.items() if r is None]
    if missing:
        raise UsageError("tracking", f"stages without a record in the store: {', '.join(missing)}", "run them first")
    client = _client()
    experiment = _experiment_id(client)
    p = params.prune
    name = run_name or f"{params.model.name} {p.method} {p.sparsity:g} {p.structure}"
    tags = {"git_commit": git_commit(), "params_hash": params.digest(), "method": p.method,
            "model": params.model.name, **(extra_tags or {})}
    parent = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    try:
        client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.flat().items()])
        for stage, record in records.items():
            child = client.create_run(experiment, run_name=stage, tags={
                "mlflow.parentRunId": parent, "stage": stage, "fingerprint": record["fingerprint"],
                "reused": str(bool((reused or {}).get(stage, False)))}).info.run_id
            was_reused = bool((reused or {}).get(stage, False))
            counted = ("allocated_sparsity", "achieved_sparsity") + (() if was_reused else
                                                                     ("seconds", "blocks_loaded", "blocks_computed"))
            numbers = {k: _number(v) for k, v in record.items() if k in counted}
            numbers.update({clean_metric_name(k): _number(v) for k, v in record.get("metrics", {}).items()})
            client.log_batch(child, params=[Param(k, str(v)) for k, v in record["params"].items()],
                             metrics=[Metric(k, v, 0, 0) for k, v in numbers.items() if v is not None])
            client.set_terminated(child)
        metrics = _layer_metrics(layout)
        metrics_file = layout.metrics / METRICS_FILE
        if metrics_file.exists():
            for key, value in json.loads(metrics_file.read_text()).items():
                if (number := _number(value)) is not None:
                    metrics.append(Metric(clean_metric_name(key), number, 0, 0))
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(parent, metrics=metrics[start:start + 900], tags=[RunTag("stages", ",".join(stages))])
        _log_artifacts(client, parent, params, layout)
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(parent)
    return parent


def _layer_metrics(layout: Layout) -> list[Any]:
    from mlflow.entities import Metric

    path = layout.reports / LAYERS_CSV
    if not path.exists():
        return []
    metrics = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for column, metric in LAYER_SERIES.items():
                if row.get(column):
                    metrics.append(Metric(metric, float(row[column]), 0, int(row["layer"])))
    return metrics


def _log_artifacts(client: Any, run_id: str, params: Params, layout: Layout) -> None:
    for folder in (layout.reports, layout.allocation, layout.metrics):
        if folder.exists():
            for file in sorted(folder.iterdir()):
                if file.suffix in (".json", ".csv", ".png"):
                    client.log_artifact(run_id, str(file), artifact_path=folder.name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
        client.log_artifact(run_id, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.tracking", description="log the store's run to MLflow")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, default=None, help="write {run_id, tracking_uri} here (JSON)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        run_id = log_pipeline_run(params, Layout.under(args.workdir), extra_tags={"driver": "dvc"})
    except UsageError as err:
        print(f"tamp: error: {err}", file=sys.stderr)
        return 2
    print(f"mlflow run {run_id} in {tracking_uri()}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri()}) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
