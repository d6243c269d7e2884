"""Held-out perplexity of methods x sparsities on one model, sharing one dense-statistics cache.

    python bench/ppl_sweep.py --model smollm2-135m --nsamples 128 --calibration builtin
    python bench/ppl_sweep.py --model smollm2-llava-next --nsamples 32 --calibration builtin-images

Prints a markdown table (rows: methods, columns: sparsities) and writes JSON. Each cell is one
`prune_to_folder` with evaluation (the same code path as `tamp prune --eval-ppl`) over one kept
store, so calibration and the dense statistics are computed once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tampkit.evaluation import perplexity
from tampkit.models import load_model
from tampkit.pipeline.params import params_from_flat
from tampkit.pipeline.prune_command import prune_to_folder


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
                params = params_from_flat({"model.name": args.model, "prune.method": method, "prune.sparsity": sparsity,
                                           "calibration.nsamples": args.nsamples, "calibration.source": args.calibration,
                                           "report.plots": False, "evaluate.image_qa": False,
                                           "evaluate.dense_agreement": False})
                report = prune_to_folder(params, Path(tmp) / "out", overwrite=True, evaluate=True,
                                         workdir=Path(tmp) / "store", progress=False)
                ppl = report["metrics"]["heldout_perplexity"]
                cells.setdefault(method, {})[str(sparsity)] = ppl
                seconds.setdefault(method, {})[str(sparsity)] = report["seconds"]["masks"]
                print(f"  {method} {sparsity}: ppl {ppl:.2f}, achieved {report['achieved_sparsity']:.6f}, "
                      f"masks {report['seconds']['masks']:.0f} s", flush=True)
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
