"""`tamp summary`: what a user ran the pipeline for, in one screen (the end of `make demo`).

The model, method and measured sparsity; each metric beside the dense model's on the same data
(the reference stage's) and what a trivial method gets where a suite carries it; each stage's
seconds (or that it was reused); where the checkpoint, report, per-layer table and plots are; and
the command that opens this run in the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tampkit.pipeline.layout import Layout
from tampkit.pipeline.table import STAGES
from tampkit.store.artifacts import REPORT_FILE, read_json
from tampkit.store.records import read_record

#: Metrics whose dense value is fixed by definition (the dense model agrees with itself).
SELF_AGREEMENT = {"agreement_kl": 0.0, "agreement_top1": 1.0}
LOWER_IS_BETTER = ("heldout_perplexity", "agreement_kl")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, pruned, dense) for every evaluated metric; '–' where the dense value is unknown."""
    from tampkit.evaluation.suites import reference_prefixes

    hidden = ("target_sparsity", "achieved_sparsity", "agreement_positions", "dense_", *reference_prefixes())
    rows = []
    for key, value in metrics.items():
        if key.startswith(hidden) or not isinstance(value, (int, float)):
            continue
        dense = metrics.get(f"dense_{key}", SELF_AGREEMENT.get(key))
        better = " (lower is better)" if key in LOWER_IS_BETTER else ""
        rows.append((key + better, _number(value), "–" if dense is None else _number(dense)))
    return rows


def summary_text(root: Path | str = "artifacts", run_file: Path | str | None = None) -> str:
    """The summary of the store under `root` (see the module docstring)."""
    root = Path(root)
    layout = Layout.under(root)
    report = read_json(layout.reports / REPORT_FILE)
    if report is None:
        return f"no pruning result under {root}/ yet (run `make demo` or `dvc repro`)"
    lines = [f"{report['model']} pruned with {report['method']} ({report.get('scorer', report['method'])} scores, "
             f"{report.get('allocation', 'uniform')} allocation, {report['structure']}): target sparsity "
             f"{report['target_sparsity']:g}, measured {report['achieved_sparsity']:.4f} (share of decoder Linear weights that are zero)"]
    metrics = read_json(layout.metrics / "metrics.json")
    if metrics:
        rows = metric_rows(metrics)
        width = max(len(r[0]) for r in rows) if rows else 10
        lines += ["", f"{'metric':<{width}}  {'pruned':>10}  {'dense':>10}"]
        lines += [f"{name:<{width}}  {pruned:>10}  {dense:>10}" for name, pruned, dense in rows]
    times = []
    for stage in STAGES:
        record = read_record(layout.folder(stage))
        if record and record.get("status") != "skipped":
            seconds = record.get("seconds")
            times.append(f"{stage} {seconds:.1f} s" if isinstance(seconds, (int, float)) else stage)
    if times:
        lines += ["", "stage seconds (when each was computed): " + ", ".join(times)]
    plots = [str(layout.reports / p) for p in report.get("plots", [])]
    lines += ["", f"checkpoint: {layout.pruned}/", f"report:     {layout.reports / REPORT_FILE}",
              f"per layer:  {layout.reports / 'layers.csv'}"]
    if plots:
        lines.append("plots:      " + ("\n            ".join(plots)))
    lines.append(f"metrics:    {layout.metrics / 'metrics.json'} (dense model: {layout.reference / 'metrics.json'})")
    run = read_json(Path(run_file) if run_file else root / "mlflow_run.json")
    if run:
        lines += ["", "MLflow: " + mlflow_command(run)]
    return "\n".join(lines)


def mlflow_command(run: dict[str, str]) -> str:
    """The command that serves the run's tracking store, and the run's page in it."""
    uri, run_id = run["tracking_uri"], run["run_id"]
    page = f"#/runs/{run_id}"
    try:
        from mlflow.tracking import MlflowClient

        page = f"#/experiments/{MlflowClient(uri).get_run(run_id).info.experiment_id}/runs/{run_id}"
    except Exception:  # noqa: BLE001 - the command is still right without the experiment id
        pass
    return f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/{page}"
