"""Flow `tamp-sweep`: methods (or scorers x allocations) x sparsities over shared calibration and statistics.

Calibration, dense statistics and ECoFLaP's block scores live in WORKDIR/shared and are computed once
(each only when some point needs it); each combination gets WORKDIR/<method>-<sparsity>
(WORKDIR/<method>-2of4 for N:M; <method> is a preset's name or scorer+allocation) for allocation,
masks, checkpoint and metrics, and its own MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tampkit.methods.presets import ALLOCATIONS, FROM_METHOD, SCORERS
from tampkit.pipeline.params import Params, load_params
from tampkit.pipeline.schema import KNOB
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.table import SHARED_STAGES as SHARED, STAGES
from tampkit.pipeline.layout import Layout
from tasks.parameters import AllocationName, MethodName, Overrides, ScorerName, as_dict
from tasks.stages import layout_dict, log_to_mlflow, run_stage_tasks
from tasks.summary import markdown_table, publish_markdown



def sweep_points(params_file: str, overrides: dict[str, Any], methods: list[str] | None = None,
                 sparsities: list[float] | None = None, nm_structures: list[str] | None = None,
                 scorers: list[str] | None = None, allocations: list[str] | None = None,
                 ) -> dict[tuple[str, float, str], Params]:
    """(label, sparsity, structure) -> the point's params, every one validated before anything runs
    (a typo fails in a second, not an hour in). See `sweep` for what the arguments mean."""
    methods = methods or ["wanda", "owl", "das", "amia", "tamp"]
    if scorers or allocations:
        pairs = [(s, a) for s in scorers or SCORERS for a in allocations or ALLOCATIONS]
        methods = [KNOB["prune.method"].default]  # replaced by each pair
    else:
        pairs = [(FROM_METHOD, FROM_METHOD)]
    settings = [(s, "unstructured") for s in sparsities or [0.5, 0.6, 0.7]]
    for structure in nm_structures or []:
        n, _, m = structure.partition(":")
        settings.append((int(n) / int(m) if n.isdigit() and m.isdigit() else 0.5, structure))
    combos: dict[tuple[str, float, str], Params] = {}
    for method in methods:
        for scorer, allocation in pairs:
            for sparsity, structure in settings:
                nm = structure != "unstructured" and allocation != FROM_METHOD  # uniform: one point per scorer
                params = load_params(params_file, {**overrides, "prune.method": method, "prune.sparsity": sparsity,
                                                   "prune.structure": structure, "prune.scorer": scorer,
                                                   "prune.allocation": "uniform" if nm else allocation})
                combos.setdefault((params.method_label(), sparsity, structure), params)
    return combos


@flow(name="tamp-sweep", log_prints=True)
def sweep(params_file: str = "params.yaml", workdir: str = "artifacts/sweep",
          methods: list[MethodName] | None = None, sparsities: list[float] | None = None,  # type: ignore[valid-type]
          overrides: Overrides | None = None, nm_structures: list[str] | None = None,  # type: ignore[valid-type]
          refresh: list[str] | None = None, scorers: list[ScorerName] | None = None,  # type: ignore[valid-type]
          allocations: list[AllocationName] | None = None) -> dict[str, Any]:  # type: ignore[valid-type]
    """Unstructured at each sparsity, plus each N:M structure in `nm_structures` (e.g. ["2:4"]) at N/M;
    stages named in `refresh` rerun (once for the shared ones, at every point for the others).
    Given `scorers` or `allocations`, the points are every scorer with every allocation (a list not
    given: all of them) instead of `methods`; N:M points are then one per scorer (N:M is uniform)."""
    combos = sweep_points(params_file, as_dict(overrides), methods, sparsities, nm_structures, scorers, allocations)
    root = Path(workdir)
    shared_layout = Layout.under(root / "shared")
    first = next(iter(combos.values()))
    refresh_ = tuple(refresh or ())
    shared: dict[str, dict[str, Any]] = {}
    for stage in SHARED:  # each with a point that needs it (else it leaves a `skipped` record)
        needing = next((p for p in combos.values() if p.needs(stage)), first)
        shared.update(run_stage_tasks(needing, shared_layout, (stage,), refresh_))
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
