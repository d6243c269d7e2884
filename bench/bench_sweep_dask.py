"""Wall time of the sweep flow on the same points, sequential and on a Dask LocalCluster, side by
side, each point's masks checked bit-identical between the two (and SparseGPT's updated weights,
which may move in the last bits with the torch thread count).

    python bench/bench_sweep_dask.py                        # organism, wanda,sparsegpt,das,tamp x 0.5,0.7, 2 workers
    python bench/bench_sweep_dask.py --model tiny-llava-next --calibration builtin-images \
        --methods wanda,tamp --sparsities 0.5 --nsamples 4  # a quick check that it runs

Each sweep runs cold in its own process (`python -c "sweep(...)"`) with its own workdir, Prefect
home and result storage (so nothing is cached between them), one MLflow store for both (a temporary
folder). Reported per mode: the process's wall time (interpreter, imports and Prefect's temporary
server included), the flow's, the shared stages' (calibration, statistics: run once, in the flow's
process, in both modes) and the rest, the points (for Dask: with starting and stopping the
cluster). The sequential sweep uses torch's default threads (the cores), each Dask worker one
thread per core it was given (cores / workers). Run it on an otherwise idle machine: the numbers
are wall times. Prints a table and writes bench/results/bench_sweep_dask.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tampkit.cli import parse_overrides  # noqa: E402
from tampkit.store.records import read_record  # noqa: E402
from tasks.cluster import cores  # noqa: E402

_SCRIPT = """
import json, sys, time
from flows.sweep import sweep
kwargs = json.loads(sys.argv[1])
start = time.perf_counter()
result = sweep(**kwargs)
print("RESULT " + json.dumps({"flow_seconds": time.perf_counter() - start, "result": result}))
"""

SHARED_FOLDERS = ("calibration", "stats", "sensitivity")


def _run(mode: str, kwargs: dict, tmp: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp / f"prefect-{mode}"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / f"results-{mode}"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "DASK_TEMPORARY_DIRECTORY": str(tmp / "dask"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(kwargs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    (tmp / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} sweep failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    shared = Path(kwargs["workdir"]) / "shared"
    shared_seconds = sum((read_record(shared / f) or {}).get("seconds", 0.0) for f in SHARED_FOLDERS)
    result = out["result"]
    return {"mode": mode, "wall_seconds": round(wall, 1), "flow_seconds": round(out["flow_seconds"], 1),
            "shared_seconds": round(shared_seconds, 1), "points_seconds": round(out["flow_seconds"] - shared_seconds, 1),
            "points": sorted(result["states"]), "workers": result.get("workers"), "dask": result.get("dask")}


def _compare(a: Path, b: Path) -> dict[str, bool | None]:
    """The point's masks-stage block files in two stores: whether the bit-packed masks (`mask.*`)
    are identical, and SparseGPT's updated weights (`weight.*`; None when the method has none),
    which may move in the last bits with the torch thread count."""
    files = sorted(p.name for p in (a / "masks").glob("block_*.safetensors"))
    if not files or files != sorted(p.name for p in (b / "masks").glob("block_*.safetensors")):
        return {"masks": False, "weights": None}
    same: dict[str, bool | None] = {"masks": True, "weights": None}
    for name in files:
        x, y = load_file(a / "masks" / name), load_file(b / "masks" / name)
        if x.keys() != y.keys():
            return {"masks": False, "weights": None}
        for key in x:
            kind = "masks" if key.startswith("mask.") else "weights"
            equal = x[key].dtype == y[key].dtype and torch.equal(x[key], y[key])
            same[kind] = same[kind] is not False and equal  # None (none seen yet) counts as equal so far
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--calibration", default="scenes")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--methods", default="wanda,sparsegpt,das,tamp")
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--limit", type=int, default=40, help="evaluate.limit (first N items of each suite)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other params.yaml key, e.g. -S evaluate.perplexity=true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "bench_sweep_dask.json")
    args = parser.parse_args()
    overrides = {"model.name": args.model, "calibration.source": args.calibration,
                 "calibration.nsamples": args.nsamples, "evaluate.limit": args.limit}
    if args.model.startswith("organism"):  # the organism's own suite, as the driver tests sweep it
        overrides.update({"evaluate.perplexity": False, "evaluate.image_qa": False, "evaluate.scene_qa": True})
    overrides.update(parse_overrides(args.set))
    base = {"params_file": str(ROOT / "params.yaml"), "methods": args.methods.split(","),
            "sparsities": [float(s) for s in args.sparsities.split(",")], "overrides": overrides}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-dask-") as tmp_:
        tmp = Path(tmp_)
        rows = [_run("sequential", {**base, "workdir": str(tmp / "sequential")}, tmp),
                _run("dask", {**base, "workdir": str(tmp / "dask"), "dask": True, "dask_workers": args.workers}, tmp)]
        identical = {p: _compare(tmp / "sequential" / p, tmp / "dask" / p) for p in rows[0]["points"]}
    sequential, on_dask = rows
    pids = sorted({w["pid"] for w in (on_dask["workers"] or {}).values()})
    print(f"{len(identical)} points ({args.methods} x {args.sparsities}) on {args.model}, {args.nsamples} samples; "
          f"{cores()} cores, load average {load:.1f} at start")
    print(f"{'mode':<26} {'wall s':>7} {'flow s':>7} {'shared s':>9} {'points s':>9}")
    for row in rows:
        name = row["mode"] if row["mode"] == "sequential" else f"dask, {args.workers} workers"
        print(f"{name:<26} {row['wall_seconds']:>7.1f} {row['flow_seconds']:>7.1f} {row['shared_seconds']:>9.1f} "
              f"{row['points_seconds']:>9.1f}")
    ratio = {k: round(sequential[k] / on_dask[k], 2) if on_dask[k] else None
             for k in ("wall_seconds", "flow_seconds", "points_seconds")}
    print(f"sequential / dask: wall {ratio['wall_seconds']}x, flow {ratio['flow_seconds']}x, "
          f"points {ratio['points_seconds']}x; worker pids {pids}")
    weights = [p for p, same in identical.items() if same["weights"] is not None]
    print(f"masks bit-identical at every point: {all(same['masks'] for same in identical.values())}"
          + (f"; SparseGPT's updated weights bit-identical: {all(identical[p]['weights'] for p in weights)}"
             if weights else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "model": args.model, "nsamples": args.nsamples, "methods": base["methods"], "sparsities": base["sparsities"],
        "overrides": overrides, "workers": args.workers, "cores": cores(), "load_average_at_start": round(load, 2),
        "rows": rows, "speedup": ratio, "worker_pids": pids, "bit_identical": identical}, indent=2) + "\n")


if __name__ == "__main__":
    main()
