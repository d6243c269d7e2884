"""Held-out perplexity of methods x sparsities on one model, sharing one dense-statistics cache.

    python bench/ppl_sweep.py --model smollm2-135m --nsamples 128 --calibration builtin
    python bench/ppl_sweep.py --model smollm2-llava-next --nsamples 32 --calibration builtin-images

Prints a markdown table (rows: methods, columns: sparsities) and writes JSON. Each cell is one
`run_prune` with --eval-ppl (the same code path as `tamp prune --eval-ppl`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tampkit.pipeline.config import PruneConfig
from tampkit.evaluation import perplexity
from tampkit.models import load_model
from tampkit.pipeline.prune_command import run_prune


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="wanda,owl,das,amia,tamp")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calibration", default="builtin")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods, sparsities = args.methods.split(","), [float(s) for s in args.sparsities.split(",")]
    json_path = args.json or Path(f"bench/results/ppl_{args.model}.json")
    dense = perplexity(load_model(args.model))
    print(f"{args.model}: dense held-out perplexity {dense:.2f}", flush=True)
    cells: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            for sparsity in sparsities:
                config = PruneConfig(model=args.model, method=method, sparsity=sparsity, out=Path(tmp) / "out",
                                     nsamples=args.nsamples, calibration=args.calibration, overwrite=True,
                                     eval_ppl=True, plots=False, stats_cache=Path(tmp) / "stats")
                report = run_prune(config, progress=False)
                cells.setdefault(method, {})[str(sparsity)] = report["heldout_perplexity"]
                seconds.setdefault(method, {})[str(sparsity)] = report["seconds"].get("prune", 0.0)
                print(f"  {method} {sparsity}: ppl {report['heldout_perplexity']:.2f}, achieved "
                      f"{report['achieved_sparsity']:.6f}, prune {report['seconds']['prune']:.0f} s", flush=True)
    print(f"\n{args.model}, {args.nsamples} samples of {args.calibration}, seed 42; dense {dense:.2f}\n")
    print("| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |")
    print("|---|" + "---:|" * len(sparsities))
    for method in methods:
        print(f"| {method} | " + " | ".join(f"{cells[method][str(s)]:.2f}" for s in sparsities) + " |")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"model": args.model, "nsamples": args.nsamples, "calibration": args.calibration,
                                     "dense": dense, "perplexity": cells, "prune_seconds": seconds}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
