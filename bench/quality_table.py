"""The quality table of issue 5: every method at the given sparsities plus the dense model, every
offline metric, through the sweep flow (shared calibration and statistics, one MLflow run each).

    python bench/quality_table.py --model smollm2-135m --calibration builtin
    python bench/quality_table.py --model smollm2-llava-next --calibration builtin-images
    python bench/quality_table.py --model organism --calibration scenes --scene-qa --sparsities 0.5,0.6,0.7,0.8 --nm 2:4

Writes the stores under artifacts/quality/<model>/ and the table (`tamp compare`) to
bench/results/quality_<model>.md, the plots beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["magnitude", "wanda", "sparsegpt", "owl", "das", "amia", "tamp"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", default="builtin-images")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--nm", default="", help="N:M structures to add at N/M sparsity, e.g. 2:4")
    parser.add_argument("--limit", type=int, default=0, help="evaluate.limit: first N items of each suite (0: all)")
    parser.add_argument("--scene-qa", action="store_true",
                        help="the organism's suite: scene questions (and agreement on them) instead of prose and photos")
    args = parser.parse_args()
    root = ROOT / "artifacts" / "quality" / args.model
    overrides = {"model.name": args.model, "calibration.source": args.calibration,
                 "calibration.nsamples": args.nsamples, "evaluate.limit": args.limit}
    if args.scene_qa:
        overrides.update({"evaluate.perplexity": False, "evaluate.image_qa": False, "evaluate.scene_qa": True})
    start = time.perf_counter()
    dense = [sys.executable, "-m", "tampkit.cli", "pipeline", "--workdir", str(root / "dense"), "--no-progress"]
    for key, value in {**overrides, "prune.method": "magnitude", "prune.sparsity": 0.0}.items():
        dense += ["-S", f"{key}={value}"]
    subprocess.run(dense, cwd=ROOT, check=True)
    script = ("from flows.sweep import sweep; "
              f"sweep(workdir={str(root)!r}, methods={args.methods.split(',')!r}, "
              f"sparsities={[float(s) for s in args.sparsities.split(',')]!r}, overrides={overrides!r}, "
              f"nm_structures={[s for s in args.nm.split(',') if s]!r})")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    out = ROOT / "bench" / "results" / f"quality_{args.model}.md"
    table = subprocess.run([sys.executable, "-m", "tampkit.cli", "compare", str(root), "--plot", str(out.with_suffix(""))],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout
    table = "\n".join(line for line in table.splitlines() if not line.startswith("wrote "))
    command = " ".join(["python", "bench/quality_table.py", *sys.argv[1:]])
    out.write_text(f"<!-- {command}; {time.perf_counter() - start:.0f} s on 2 CPU cores -->\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
