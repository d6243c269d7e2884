"""Wall time of the pipeline on the default model: a cold run, a fully cached rerun, and resumes
after a SIGKILL at the middle block of the stats stage and of the masks stage, each checked
bit-identical (every block file, and the final masks) against the cold run.

    python bench/bench_pipeline.py            # params.yaml of the repo (smollm2-llava-next, tamp, 50%)
    python bench/bench_pipeline.py -S model.name=tiny-llava

Each run is `tamp pipeline` in its own process (model load included). Prints a table and writes
bench/results/bench_pipeline.json.
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

from tampkit.store.artifacts import MASKS_FILE, load_masks  # noqa: E402
from tampkit.store.block_store import KILL_ENV  # noqa: E402
from tampkit.cli import parse_overrides  # noqa: E402
from tampkit.pipeline.params import load_params  # noqa: E402
from tampkit.store.records import read_record  # noqa: E402


def _pipeline(workdir: Path, sets: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    args = [sys.executable, "-m", "tampkit.cli", "pipeline", "--params", str(ROOT / "params.yaml"),
            "--workdir", str(workdir), "--no-progress"]
    for item in sets:
        args += ["-S", item]
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, -9):
        raise RuntimeError(proc.stderr[-2000:])
    return seconds, proc.returncode


def _identical(a: Path, b: Path) -> bool:
    for stage in ("stats", "masks"):
        files = sorted(p.name for p in (a / stage).glob("block_*.safetensors"))
        if files != sorted(p.name for p in (b / stage).glob("block_*.safetensors")):
            return False
        for name in files:
            x, y = load_file(str(a / stage / name)), load_file(str(b / stage / name))
            if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
                return False
    ma, mb = load_masks(a / "pruned" / MASKS_FILE), load_masks(b / "pruned" / MASKS_FILE)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def _stage_seconds(workdir: Path) -> dict[str, float]:
    folders = {"calibrate": "calibration", "stats": "stats", "allocate": "allocation", "masks": "masks",
               "prune": "pruned", "evaluate": "metrics"}
    return {stage: round(read_record(workdir / folder)["seconds"], 1) for stage, folder in folders.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "bench_pipeline.json")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml", parse_overrides(args.set))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cold = Path(tmp) / "cold"
        seconds, _ = _pipeline(cold, args.set)
        rows.append({"run": "cold", "seconds": seconds, "stages": _stage_seconds(cold)})
        seconds, _ = _pipeline(cold, args.set)
        rows.append({"run": "fully cached rerun", "seconds": seconds})
        blocks = len(list((cold / "masks").glob("block_*.safetensors")))
        middle = blocks // 2
        for stage in ("stats", "masks"):
            work = Path(tmp) / f"kill-{stage}"
            killed, code = _pipeline(work, args.set, {**os.environ, KILL_ENV: f"{stage}:{middle}"})
            assert code == -9, f"the {stage} run was not killed"
            resumed, _ = _pipeline(work, args.set)
            record = read_record(work / stage)
            rows.append({"run": f"killed at {stage} block {middle}/{blocks}, then resumed", "seconds": resumed,
                         "killed_after": killed, "blocks_loaded": record["blocks_loaded"],
                         "blocks_computed": record["blocks_computed"], "stages": _stage_seconds(work),
                         "bit_identical": _identical(cold, work)})
    print(f"{'run':<48} {'wall s':>8}  notes")
    for row in rows:
        notes = ""
        if "blocks_loaded" in row:
            notes = (f"blocks read back {row['blocks_loaded']}, computed {row['blocks_computed']}; "
                     f"bit-identical: {row['bit_identical']}; killed after {row['killed_after']:.1f}s")
        elif "stages" in row:
            notes = ", ".join(f"{k} {v}" for k, v in row["stages"].items())
        print(f"{row['run']:<48} {row['seconds']:>8.1f}  {notes}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": params.model.name, "method": params.prune.method,
                                     "nsamples": params.calibration.nsamples, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
