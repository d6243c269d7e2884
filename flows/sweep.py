"""Flow `tamp-sweep`: methods (or scorers x allocations) x sparsities over shared calibration and statistics.

Calibration, dense statistics and ECoFLaP's block scores live in WORKDIR/shared and are computed once
(each only when some point needs it); each combination gets WORKDIR/<method>-<sparsity>
(WORKDIR/<method>-2of4 for N:M; <method> is a preset's name or scorer+allocation) for allocation,
masks, checkpoint and metrics, and its own MLflow run.

The points run one after another in the flow's process by default. With `dask=True` (or a
`dask_address`) each point is one Prefect task (`sweep_point`: its own stages, then its MLflow run)
submitted to a `DaskTaskRunner`, after the shared stages ran here: a LocalCluster by default, or the
Dask scheduler at `dask_address`. See docs/scale.md, "Sweeps on a Dask cluster", and
`tasks/cluster.py` for the runner's settings.

    python -m flows.sweep --methods wanda,tamp --sparsities 0.5,0.7 --dask [--dask-workers 2]
    python -m flows.sweep --methods wanda,tamp --dask-address tcp://10.0.0.5:8786
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tampkit.methods.presets import ALLOCATIONS, FROM_METHOD, SCORERS
from tampkit.pipeline.params import Params, load_params, params_from_dict
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


def point_label(method: str, sparsity: float, structure: str) -> str:
    """The point's folder under WORKDIR: `<method>-<sparsity>`, or `<method>-2of4` for N:M."""
    return f"{method}-{sparsity:g}" if structure == "unstructured" else f"{method}-{structure.replace(':', 'of')}"


def run_point(label: str, params: dict[str, Any], shared_root: str, run_root: str, refresh: list[str],
              shared_reused: dict[str, bool], tags: dict[str, str]) -> dict[str, Any]:
    """One point, in a flow or inside a task: its own stages (the cached stage tasks, called
    inline), then its MLflow run, all under its run lock. The shared stages are done: their records
    are read from `shared_root`, and `shared_reused` says whether each was reused. Returns the
    point's stage states (its own stages), MLflow run id and evaluation metrics."""
    params_ = params_from_dict(params)
    layout = Layout.shared(shared_root, run_root)
    with run_lock(layout):  # the point's own folders; the shared ones are done
        own = run_stage_tasks(params_, layout, tuple(s for s in STAGES if s not in SHARED), tuple(refresh))
        reused = {**shared_reused, **{s: v["state"] == "Cached" or bool(v["record"].get("reused")) for s, v in own.items()}}
        run_id = log_to_mlflow(params_.to_dict(), layout_dict(layout), list(STAGES), reused,
                               f"sweep {params_.model.name} {label}", tags)
    return {"label": label, "states": {s: v["state"] for s, v in own.items()}, "mlflow_run_id": run_id,
            "metrics": own["evaluate"]["record"].get("metrics", {})}


@task(name="sweep-point", cache_policy=NO_CACHE)
def sweep_point(label: str, params: dict[str, Any], shared_root: str, run_root: str, refresh: list[str],
                shared_reused: dict[str, bool], tags: dict[str, str], cwd: str, tracking_uri: str,
                torch_threads: int | None = None) -> dict[str, Any]:
    """`run_point` on a Dask worker. Not cached itself (its stages are, by fingerprint, and its MLflow
    logging must run to return the run id). Every path comes absolute, and the worker first checks
    it sees the flow's folders and moves to the flow's working directory (`enter_flow_folder`).

    The stages are called as nested Prefect tasks inside this one (Prefect 3 runs a task called in a
    task inline, as a child task run, on the same worker): so their caching, records and
    fingerprints are those of the sequential sweep. MLflow: `tracking_uri` (the flow's store,
    resolved in the flow) is set as `MLFLOW_TRACKING_URI` for the point, since the library resolves
    the store from the environment or the working directory. torch: `torch_threads` intra-op threads
    when given (a LocalCluster sets cores / workers), else the worker's own (1 under a Dask Nanny).
    The worker's pid and host are tagged on the MLflow run (`worker_pid`, `worker_host`) and
    returned."""
    from tasks.cluster import enter_flow_folder

    enter_flow_folder(cwd, shared_root)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # a worker process serves one flow's store at a time
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    worker = {"pid": os.getpid(), "host": socket.gethostname()}
    tags = {**tags, "worker_pid": str(worker["pid"]), "worker_host": worker["host"]}
    return {**run_point(label, params, shared_root, run_root, refresh, shared_reused, tags), "worker": worker}


def _run_on_dask(points: dict[str, dict[str, Any]], address: str | None, workers: int | None,
                 threads: int | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Submit every point (label -> run_point's keyword arguments) to a DaskTaskRunner
    and wait for all of them. A failed point does not stop the others (their results stay in the
    store and MLflow); once all are done the first failure is raised, the failed labels printed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.cluster import (absolute_tracking_uri, dask_task_runner, environment_kept, local_cluster_shape,
                               worker_api_url)
    from tasks.tracking import ensure_experiment, tracking_uri

    n, torch_threads = local_cluster_shape(len(points), workers, threads)
    if address:  # the scheduler's workers are what they are; torch threads only when asked
        torch_threads = threads  # type: ignore[assignment]
    uri = absolute_tracking_uri(tracking_uri())
    ensure_experiment(uri)  # the store and experiment exist before two workers race to create them
    api, warning = worker_api_url(address)
    if warning:
        print(f"warning: {warning}")
    runner = dask_task_runner(address, n, torch_threads)
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, BaseException] = {}
    # the settings each submitted task carries to its worker (Prefect serialises them with the task)
    with environment_kept(), temporary_settings(updates={PREFECT_API_URL: api}), runner:
        scheduler = runner.client.scheduler.address
        if address:
            n = len(runner.client.nthreads())  # the workers connected now (more may join)
        print(f"dask: {scheduler}, {n} workers" if address else
              f"dask: LocalCluster {scheduler}, {n} workers x 1 thread, {torch_threads} torch thread(s) each")
        futures = {label: runner.submit(sweep_point, {
            **kwargs, "cwd": os.getcwd(), "tracking_uri": uri, "torch_threads": torch_threads,
            "tags": {**kwargs["tags"], "dask_scheduler": scheduler}}) for label, kwargs in points.items()}
        for label, future in futures.items():
            try:
                results[label] = future.result()
            except Exception as error:  # noqa: BLE001 - reported below, the first one raised
                errors[label] = error
    if errors:
        print(f"sweep points failed: {', '.join(errors)}")
        raise next(iter(errors.values()))
    return results, {"scheduler": scheduler, "workers": n, "torch_threads": torch_threads}


@flow(name="tamp-sweep", log_prints=True)
def sweep(params_file: str = "params.yaml", workdir: str = "artifacts/sweep",
          methods: list[MethodName] | None = None, sparsities: list[float] | None = None,  # type: ignore[valid-type]
          overrides: Overrides | None = None, nm_structures: list[str] | None = None,  # type: ignore[valid-type]
          refresh: list[str] | None = None, scorers: list[ScorerName] | None = None,  # type: ignore[valid-type]
          allocations: list[AllocationName] | None = None,  # type: ignore[valid-type]
          dask: bool = False, dask_address: str | None = None, dask_workers: int | None = None,
          dask_threads: int | None = None) -> dict[str, Any]:
    """Unstructured at each sparsity, plus each N:M structure in `nm_structures` (e.g. ["2:4"]) at N/M;
    stages named in `refresh` rerun (once for the shared ones, at every point for the others).
    Given `scorers` or `allocations`, the points are every scorer with every allocation (a list not
    given: all of them) instead of `methods`; N:M points are then one per scorer (N:M is uniform).

    `dask` (or a `dask_address`): the points run as `sweep_point` tasks on Dask, after the shared
    stages ran here: on the scheduler at `dask_address` (e.g. tcp://10.0.0.5:8786), else on a
    LocalCluster of `dask_workers` processes (default: the cores, at most one per point).
    `dask_threads`: torch threads per point on a worker (default: on a LocalCluster the cores shared
    out among the workers; on a scheduler's workers their own setting, 1 under `dask worker`).
    WORKDIR, the MLflow store and Prefect's result storage must then be on a filesystem every
    worker sees."""
    combos = sweep_points(params_file, as_dict(overrides), methods, sparsities, nm_structures, scorers, allocations)
    on_dask = bool(dask or dask_address)
    root = Path(workdir).resolve() if on_dask else Path(workdir)  # a worker may have another cwd
    shared_layout = Layout.under(root / "shared")
    first = next(iter(combos.values()))
    refresh_ = tuple(refresh or ())
    shared: dict[str, dict[str, Any]] = {}
    for stage in SHARED:  # each with a point that needs it (else it leaves a `skipped` record)
        needing = next((p for p in combos.values() if p.needs(stage)), first)
        shared.update(run_stage_tasks(needing, shared_layout, (stage,), refresh_))
    shared_reused = {s: v["state"] == "Cached" or bool(v["record"].get("reused")) for s, v in shared.items()}
    points = {point_label(*key): {
        "label": point_label(*key), "params": params.to_dict(), "shared_root": str(root / "shared"),
        "run_root": str(root / point_label(*key)), "refresh": list(refresh_), "shared_reused": shared_reused,
        "tags": {"driver": "prefect-sweep"}} for key, params in combos.items()}
    dask_info: dict[str, Any] | None = None
    if on_dask:
        results, dask_info = _run_on_dask(points, dask_address, dask_workers, dask_threads)
    else:
        results = {label: run_point(**kwargs) for label, kwargs in points.items()}
    rows, states = [], {}
    for (method, sparsity, structure), label in zip(combos, points):
        metrics, run_id = results[label]["metrics"], results[label]["mlflow_run_id"]
        rows.append([method, sparsity, structure, metrics.get("achieved_sparsity", float("nan")),
                     metrics.get("heldout_perplexity", float("nan")), metrics.get("scene_accuracy", float("nan")), run_id])
        states[label] = {**{s: v["state"] for s, v in shared.items()}, **results[label]["states"]}
    header = ["method", "sparsity", "structure", "achieved", "held-out ppl", "scene accuracy", "mlflow run"]
    table_rows = rows
    if on_dask:  # where each point ran
        header = [*header, "worker"]
        table_rows = [[*row, "{host}:{pid}".format(**results[label]["worker"])] for row, label in zip(rows, points)]
    publish_markdown("# Sweep\n\n" + markdown_table(header, table_rows) + "\n",
                     "tamp-sweep")
    out: dict[str, Any] = {"states": states, "shared": {s: v["state"] for s, v in shared.items()}, "rows": rows}
    if on_dask:
        out["workers"] = {label: r["worker"] for label, r in results.items()}
        out["dask"] = dask_info
    return out


def _list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m flows.sweep [options]`: the flow with its parameters from the command line (no
    option: params.yaml's sweep, sequential, as the flow's defaults)."""
    from tampkit.cli import parse_overrides

    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=(
        "The tamp-sweep flow: methods x sparsities over shared calibration and statistics; "
        "--dask runs the points on Dask (docs/scale.md)."))
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workdir", default="artifacts/sweep", help="the sweep's store (default: artifacts/sweep)")
    parser.add_argument("--methods", help="comma-separated presets (default: wanda,owl,das,amia,tamp)")
    parser.add_argument("--sparsities", help="comma-separated, e.g. 0.5,0.7 (default: 0.5,0.6,0.7)")
    parser.add_argument("--nm", help="comma-separated N:M structures, e.g. 2:4")
    parser.add_argument("--scorers", help="comma-separated scorers (every scorer x allocation pair)")
    parser.add_argument("--allocations", help="comma-separated allocations (every scorer x allocation pair)")
    parser.add_argument("--refresh", help="comma-separated stages to rerun")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S calibration.nsamples=16 (value parsed as YAML)")
    parser.add_argument("--dask", action="store_true", help="run the points on Dask (a LocalCluster by default)")
    parser.add_argument("--dask-address", metavar="tcp://HOST:8786",
                        help="an existing Dask scheduler (implies --dask); WORKDIR must be on a filesystem its workers see")
    parser.add_argument("--dask-workers", type=int, metavar="N",
                        help="LocalCluster worker processes (default: the cores, at most one per point)")
    parser.add_argument("--dask-threads", type=int, metavar="N",
                        help="torch threads per point on a worker (default: LocalCluster cores / workers; "
                             "a scheduler's workers: theirs, 1 under `dask worker`)")
    args = parser.parse_args(argv)
    sparsities = [float(s) for s in _list(args.sparsities) or []] or None
    return sweep(params_file=args.params, workdir=args.workdir, methods=_list(args.methods), sparsities=sparsities,
                 overrides=parse_overrides(args.set) or None, nm_structures=_list(args.nm), refresh=_list(args.refresh),
                 scorers=_list(args.scorers), allocations=_list(args.allocations), dask=args.dask,
                 dask_address=args.dask_address, dask_workers=args.dask_workers, dask_threads=args.dask_threads)


if __name__ == "__main__":
    main()
