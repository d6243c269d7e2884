"""MLflow logging of one pipeline run, from the stage records and files in the artifact store.

One parent run per pipeline result, with
  - every param (dotted keys) and the evaluation metrics, logged with the real time (ms since epoch);
  - honest scalar summaries of the per-layer series (`layer_<series>_min`/`_max`), never the series
    themselves: a series shows as one number (its last step) in the runs table, which would pose
    as a summary of the run;
  - the per-layer table as an MLflow table artifact (`layers.json`, see `mlflow.load_table`), the
    report, plots and params.yaml as artifacts;
  - tags: the standard `mlflow.source.git.commit` / `mlflow.source.git.branch` / `mlflow.source.name`
    / `mlflow.source.type` / `mlflow.user`, `git_dirty`, `params_hash`, `result` (hash of the
    params and of every stage's fingerprint) and, under `dvc exp run`, `dvc.exp_name` and
    `dvc.baseline_rev`.
Below it, nested runs: one per stage (its params, fingerprint, seconds, whether it was reused) and
one named `layers` holding the per-layer series (`layer_allocated_sparsity`,
`layer_achieved_sparsity`, `layer_mean_diversity` with DAS) with step = layer index.

A rerun that reused every stage and finds a finished parent run with the same `result` (and the
same `driver` tag) does not add a parent: it tags the existing one (`last_seen`, `reuse_count`) and
returns its id. Without per-stage `reused` flags (the DVC `track` stage) a stage counts as reused
when the records on disk are byte-for-byte those that parent logged (`records` tag): a stage that
ran again writes a new record.

Logging reads what the stages wrote, so the Prefect flows and DVC (`python -m tasks.tracking`, the
`track` stage) log the same things. The store is `MLFLOW_TRACKING_URI` when set, else
`sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlartifacts`, `<root>` being the repository
root: the original repository when DVC runs the experiment in a temporary copy
(`dvc exp run --temp` / `--queue` run in `.dvc/tmp/exps/...` and set `DVC_ROOT` to the original).

Run as a module: `python -m tasks.tracking [--params params.yaml] [--workdir artifacts]`.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from tampkit.core.errors import UsageError
from tampkit.pipeline.params import Params, load_params
from tampkit.pipeline.stages.evaluate import METRICS_FILE
from tampkit.pipeline.stages.prune import LAYERS_CSV
from tampkit.pipeline.table import STAGES
from tampkit.pipeline.layout import Layout
from tampkit.store.records import read_record

EXPERIMENT = "tamp"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
#: Nested run holding the per-layer series.
LAYERS_RUN = "layers"
#: Per-layer series (column of reports/layers.csv -> metric name on the `layers` run).
LAYER_SERIES = {"allocated_sparsity": "layer_allocated_sparsity", "achieved_sparsity": "layer_achieved_sparsity",
                "mean_diversity": "layer_mean_diversity"}
#: What DVC sets for every stage command (dvc/stage/run.py); under `dvc exp run` the queue sets it
#: to the original repository's root, also when the stage runs in a temporary copy.
DVC_ROOT_ENV = "DVC_ROOT"
#: Where DVC puts the temporary copies of `dvc exp run --temp` / `--queue` (dvc/repo/experiments/utils.py).
DVC_EXPS_TMP = (".dvc", "tmp", "exps")


# --- where the store lives ------------------------------------------------------------------------


def repository_root(cwd: Path | None = None) -> Path:
    """The repository the store belongs to (absolute): `DVC_ROOT` when DVC runs us, else the
    folder above `.dvc/tmp/exps/` when the working directory is a DVC temporary workspace, else
    the nearest folder at or above the working directory holding `dvc.yaml` or `.dvc`, else the
    working directory."""
    here = Path(cwd or Path.cwd()).resolve()
    dvc_root = os.environ.get(DVC_ROOT_ENV)
    if dvc_root and Path(dvc_root).is_dir():
        return Path(dvc_root).resolve()
    parts = here.parts
    for i in range(len(parts) - len(DVC_EXPS_TMP) + 1):
        if parts[i:i + len(DVC_EXPS_TMP)] == DVC_EXPS_TMP:
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(cwd: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set (always wins), else the SQLite file at the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repository_root(cwd) / DB_FILE}"


def artifact_root(uri: str | None = None, cwd: Path | None = None) -> Path | None:
    """Where a new experiment keeps its artifacts: beside the SQLite/file store, or at the
    repository root; None for a tracking server (it has its own artifact store)."""
    uri = uri or tracking_uri(cwd)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        database = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if database and database != ":memory:":
            return Path(database).resolve().parent / ARTIFACTS_DIR  # SQLite resolves a relative path from the cwd
    elif parsed.scheme in ("", "file"):
        return repository_root(cwd) / ARTIFACTS_DIR
    return None


# --- tags -------------------------------------------------------------------------------------------


def clean_metric_name(name: str) -> str:
    """MLflow allows letters, digits, `_ - . / :` and spaces; lmms-eval keys carry commas
    (`exact_match,none`), so everything else becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name).strip("_") or "metric"


def _git(args: list[str], cwd: Path | None) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """The standard MLflow git tags plus `git_dirty` (tracked files modified); {} outside git."""
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    if dirty is not None:
        tags["git_dirty"] = str(bool(dirty)).lower()
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags


def git_commit(cwd: Path | None = None) -> str:
    """`<sha>` or `<sha>-dirty`, or `unknown` outside git (for messages; the tags are separate)."""
    state = git_state(cwd)
    if not state:
        return "unknown"
    return state["mlflow.source.git.commit"] + ("-dirty" if state.get("git_dirty") == "true" else "")


def _source_name() -> str:
    if stage := os.environ.get("DVC_STAGE"):
        return f"dvc.yaml:{stage}"
    if (prefect_context := sys.modules.get("prefect.context")) is not None:  # only when Prefect runs us
        try:
            context = prefect_context.FlowRunContext.get()
            if context is not None and context.flow is not None:
                return f"prefect flow {context.flow.name}"
        except Exception:  # noqa: BLE001 - a name is not worth failing the logging for
            pass
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else "tasks.tracking"


def source_tags() -> dict[str, str]:
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": _source_name()}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def result_hash(params: Params, records: dict[str, dict[str, Any]]) -> str:
    """What the run computed: the params and every stage's fingerprint (which covers the code,
    the model and the upstream stages)."""
    payload = {"params": params.digest(), "stages": {s: r["fingerprint"] for s, r in records.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def records_hash(records: dict[str, dict[str, Any]]) -> str:
    """The records as written (a stage that runs again writes a new one: its seconds differ)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()


# --- logging --------------------------------------------------------------------------------------


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = artifact_root(client.tracking_uri)
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri() if artifacts else None)


def ensure_experiment(uri: str | None = None) -> str:
    """The experiment's id in the store at `uri` (default: `tracking_uri()`), the store and the
    experiment created when missing. A sweep on Dask calls it before its workers log: two workers
    meeting an empty SQLite store would both create its tables, or both the experiment (one fails)."""
    from mlflow.tracking import MlflowClient

    return _experiment_id(MlflowClient(uri or tracking_uri()))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_logged(client: Any, experiment: str, result: str, driver: str | None) -> Any | None:
    """The latest finished parent run of `result` (logged by `driver`, when given)."""
    query = f"tags.result = '{_quote(result)}' and attributes.status = 'FINISHED'"
    if driver:
        query += f" and tags.driver = '{_quote(driver)}'"
    runs = client.search_runs([experiment], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=20)
    return next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)


def log_pipeline_run(params: Params, layout: Layout, run_name: str | None = None,
                     stages: tuple[str, ...] = STAGES, extra_tags: dict[str, str] | None = None,
                     reused: dict[str, bool] | None = None) -> str:
    """Log the finished run in `layout`; returns the parent run id. `reused`: per stage, whether
    this run took it from a cache (Prefect's or the store's) instead of running it; None: unknown
    (infer it from the records, see the module doc). A rerun that reused every stage of a result
    already logged returns that parent run, tagged, instead of a new one. Stages the result does not
    need (`Stage.when`: the statistics of a uniform Wanda) get no child run."""
    from mlflow.entities import Metric, Param, RunTag

    stages = tuple(s for s in stages if params.needs(s))
    records = {stage: read_record(layout.folder(stage)) for stage in stages}
    missing = [s for s, r in records.items() if r is None]
    if missing:
        raise UsageError("tracking", f"stages without a record in the store: {', '.join(missing)}", "run them first")
    client = _client()
    experiment = _experiment_id(client)
    result, written = result_hash(params, records), records_hash(records)
    previous = find_logged(client, experiment, result, (extra_tags or {}).get("driver"))
    if previous is not None:
        all_reused = (all(bool(reused.get(s, False)) for s in stages) if reused is not None
                      else previous.data.tags.get("records") == written)
        if all_reused:
            return _seen_again(client, previous)

    p = params.prune
    name = run_name or f"{params.model.name} {params.method_label()} {p.sparsity:g} {p.structure}"
    tags = {**source_tags(), **git_state(), "params_hash": params.digest(), "result": result, "records": written,
            "method": params.method_label(), "model": params.model.name, "stages": ",".join(stages), **(extra_tags or {})}
    parent = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    try:
        client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.flat().items()])
        for stage, record in records.items():
            was_reused = bool((reused or {}).get(stage, False))
            child = client.create_run(experiment, run_name=stage, tags={
                "mlflow.parentRunId": parent, "stage": stage, "fingerprint": record["fingerprint"],
                "reused": str(was_reused)}).info.run_id
            counted = ("allocated_sparsity", "achieved_sparsity") + (() if was_reused else
                                                                     ("seconds", "blocks_loaded", "blocks_computed"))
            numbers = {k: _number(v) for k, v in record.items() if k in counted}
            numbers.update({clean_metric_name(k): _number(v) for k, v in record.get("metrics", {}).items()})
            now = _now_ms()
            client.log_batch(child, params=[Param(k, str(v)) for k, v in record["params"].items()],
                             metrics=[Metric(k, v, now, 0) for k, v in numbers.items() if v is not None])
            client.set_terminated(child)
        rows = _layer_rows(layout)
        now = _now_ms()
        metrics = [Metric(k, v, now, 0) for k, v in _layer_summaries(rows).items()]
        metrics_file = layout.metrics / METRICS_FILE
        if metrics_file.exists():
            for key, value in json.loads(metrics_file.read_text()).items():
                if (number := _number(value)) is not None:
                    metrics.append(Metric(clean_metric_name(key), number, now, 0))
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(parent, metrics=metrics[start:start + 900])
        if rows:
            _log_layers(client, experiment, parent, rows)
        _log_artifacts(client, parent, params, layout)
    except BaseException:
        client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(parent)
    return parent


def _seen_again(client: Any, run: Any) -> str:
    """Tag a logged parent run as produced again (a fully cached rerun) and return its id."""
    run_id = run.info.run_id
    count = int(run.data.tags.get("reuse_count", "0") or 0) + 1
    client.set_tag(run_id, "reuse_count", str(count))
    client.set_tag(run_id, "last_seen", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    return run_id


def _layer_rows(layout: Layout) -> list[dict[str, float]]:
    path = layout.reports / LAYERS_CSV
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(handle)]


def _layer_summaries(rows: list[dict[str, float]]) -> dict[str, float]:
    """Scalar summaries of each per-layer series, for the parent run (`layer_<series>_min/_max`)."""
    summaries = {}
    for column, metric in LAYER_SERIES.items():
        values = [row[column] for row in rows if column in row]
        if values:
            summaries[f"{metric}_min"] = min(values)
            summaries[f"{metric}_max"] = max(values)
    return summaries


def _log_layers(client: Any, experiment: str, parent: str, rows: list[dict[str, float]]) -> None:
    """The series on a nested `layers` run (step = layer index); the table on the parent."""
    from mlflow.entities import Metric

    now = _now_ms()
    metrics = [Metric(metric, row[column], now, int(row["layer"]))
               for row in rows for column, metric in LAYER_SERIES.items() if column in row]
    child = client.create_run(experiment, run_name=LAYERS_RUN, tags={"mlflow.parentRunId": parent,
                                                                      "per_layer": "true"}).info.run_id
    try:
        for start in range(0, len(metrics), 900):
            client.log_batch(child, metrics=metrics[start:start + 900])
    except BaseException:
        client.set_terminated(child, status="FAILED")
        raise
    client.set_terminated(child)
    columns = ["layer", *(c for c in LAYER_SERIES if any(c in row for row in rows))]
    client.log_table(parent, data={c: [int(r[c]) if c == "layer" else r.get(c) for r in rows] for c in columns},
                     artifact_file="layers.json")


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
