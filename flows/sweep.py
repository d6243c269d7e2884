"""Flow `tamp-sweep`: methods x sparsities over one calibration and one dense-statistics pass.

Calibration and statistics live in WORKDIR/shared and are computed once; each combination gets
WORKDIR/<method>-<sparsity> (WORKDIR/<method>-2of4 for N:M) for allocation, masks, checkpoint and metrics, and its own MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tampkit.pipeline.params import load_params
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.table import SHARED_STAGES as SHARED, STAGES
from tampkit.pipeline.layout import Layout
from tasks.parameters import MethodName, Overrides, as_dict
from tasks.stages import layout_dict, log_to_mlflow, run_stage_tasks
from tasks.summary import markdown_table, publish_markdown



@flow(name="tamp-sweep", log_prints=True)
def sweep(params_file: str = "params.yaml", workdir: str = "artifacts/sweep",
          methods: list[MethodName] | None = None, sparsities: list[float] | None = None,  # type: ignore[valid-type]
          overrides: Overrides | None = None, nm_structures: list[str] | None = None,  # type: ignore[valid-type]
          refresh: list[str] | None = None) -> dict[str, Any]:
    """Unstructured at each sparsity, plus each N:M structure in `nm_structures` (e.g. ["2:4"]) at N/M;
    stages named in `refresh` rerun (once for the shared ones, at every point for the others)."""
    methods = methods or ["wanda", "owl", "das", "amia", "tamp"]
    sparsities = sparsities or [0.5, 0.6, 0.7]
    settings = [(s, "unstructured") for s in sparsities]
    for structure in nm_structures or []:
        n, _, m = structure.partition(":")
        settings.append((int(n) / int(m) if n.isdigit() and m.isdigit() else 0.5, structure))
    # Every combination is validated before anything runs: a typo fails in a second, not an hour in.
    combos = {(m, s, st): load_params(params_file, {**as_dict(overrides), "prune.method": m, "prune.sparsity": s,
                                                    "prune.structure": st})
              for m in methods for s, st in settings}
    root = Path(workdir)
    shared_layout = Layout.under(root / "shared")
    first = next(iter(combos.values()))
    refresh_ = tuple(refresh or ())
    shared = run_stage_tasks(first, shared_layout, SHARED, refresh_)
    rows, states = [], {}
    for (method, sparsity, structure), params in combos.items():
        label = f"{method}-{sparsity:g}" if structure == "unstructured" else f"{method}-{structure.replace(':', 'of')}"
        layout = Layout.shared(root / "shared", root / label)
        with run_lock(layout):  # the point's own folders; the shared ones are done above
            own = run_stage_tasks(params, layout, tuple(s for s in STAGES if s not in SHARED), refresh_)
            stages = {**shared, **own}
            reused = {s: v["state"] == "Cached" or bool(v["record"].get("reused")) for s, v in stages.items()}
            run_id = log_to_mlflow(params.to_dict(), layout_dict(layout), list(STAGES), reused,
                                   f"sweep {params.model.name} {label}", {"driver": "prefect-sweep"})
        metrics = own["evaluate"]["record"].get("metrics", {})
        rows.append([method, sparsity, structure, metrics.get("achieved_sparsity", float("nan")),
                     metrics.get("heldout_perplexity", float("nan")), metrics.get("scene_accuracy", float("nan")), run_id])
        states[label] = {s: v["state"] for s, v in stages.items()}
    header = ["method", "sparsity", "structure", "achieved", "held-out ppl", "scene accuracy", "mlflow run"]
    publish_markdown("# Sweep\n\n" + markdown_table(header, rows) + "\n",
                     "tamp-sweep")
    return {"states": states, "shared": {s: v["state"] for s, v in shared.items()}, "rows": rows}


if __name__ == "__main__":
    sweep()
