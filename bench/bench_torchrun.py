"""Data-parallel pruning under torchrun against one process, side by side in one run: wall time of
`tamp prune` (whole command: interpreter, model load, every stage), the masks stage's own seconds,
and how many mask entries agree with the one-process masks.

    python bench/bench_torchrun.py                                   # smollm2-135m, 32 text samples, wanda/sparsegpt/tamp
    python bench/bench_torchrun.py --model tiny-llava-next --nsamples 4 --methods wanda   # a quick check

One process uses torch's default threads (the cores); each of the N ranks gets cores / N threads
(OMP_NUM_THREADS), so both use the whole machine. On CPU the ranks split the block forwards, not the
cores: the gain over one multi-threaded process is the part of the work that does not scale with
threads (Python, hooks, small matmuls) and the cost is the model loaded N times and the gathers.
Run it on an otherwise idle machine. Prints a table and writes bench/results/bench_torchrun.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tampkit.store.artifacts import MASKS_FILE, load_masks  # noqa: E402


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _prune(ranks: int, args: argparse.Namespace, method: str, out: Path) -> dict:
    tamp = shutil.which("tamp") or str(Path(sys.executable).with_name("tamp"))
    command = [tamp, "prune", "--model", args.model, "--calibration", args.calibration, "--nsamples", str(args.nsamples),
               "--method", method, "--sparsity", str(args.sparsity), "--out", str(out), "--no-progress", "--no-plots"]
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                   "--master-addr", "127.0.0.1", "--master-port", _port(), *command]
        env["OMP_NUM_THREADS"] = str(max(1, cores // ranks))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{method} with {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    report = json.loads(next(out.glob("*_report.json")).read_text())
    return {"wall_seconds": wall, "stage_seconds": report.get("seconds", {}),
            "masks": load_masks(out / MASKS_FILE)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calibration", default="builtin-text")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--methods", default="wanda,sparsegpt,tamp")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "bench_torchrun.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-torchrun-") as tmp:
        for method in args.methods.split(","):
            one = _prune(1, args, method, Path(tmp) / f"{method}-1")
            many = _prune(args.ranks, args, method, Path(tmp) / f"{method}-{args.ranks}")
            total = sum(m.numel() for m in one["masks"].values())
            agree = sum(int((one["masks"][k] == many["masks"][k]).sum()) for k in one["masks"])
            rows.append({"method": method, "one_process_s": one["wall_seconds"], f"{args.ranks}_ranks_s": many["wall_seconds"],
                         "speedup": one["wall_seconds"] / many["wall_seconds"], "mask_agreement": agree / total,
                         "entries_differing": total - agree, "one_stages": one["stage_seconds"],
                         "ranks_stages": many["stage_seconds"]})
    header = (f"| method | one process (s) | {args.ranks} gloo ranks (s) | speedup | masks stage: one / ranks (s) "
              "| mask agreement | entries differing |")
    print(f"{args.model}, {args.nsamples} x {args.calibration}, sparsity {args.sparsity}, {os.cpu_count()} cores\n")
    print(header + "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['one_process_s']:.1f} | {r[f'{args.ranks}_ranks_s']:.1f} | {r['speedup']:.2f}x | "
              f"{r['one_stages'].get('masks', float('nan')):.1f} / {r['ranks_stages'].get('masks', float('nan')):.1f} | "
              f"{r['mask_agreement']:.6f} | {r['entries_differing']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "model": args.model, "nsamples": args.nsamples,
                                     "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
