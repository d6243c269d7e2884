"""The quality table of issue 5: every method at the given sparsities plus the dense model, every
offline metric, through the sweep flow (shared calibration and statistics, one MLflow run each).

    python bench/quality_table.py --model smollm2-135m --calibration builtin
    python bench/quality_table.py --model smollm2-llava-next --calibration builtin-images
    python bench/quality_table.py --model organism --calibration scenes --scene-qa --sparsities 0.5,0.6,0.7,0.8 --nm 2:4

With --scorers/--allocations (each "all" or a comma list) the points are every scorer with every
allocation instead of the method presets (issue 18), and a plot of the best few against sparsity is
added (--best K of them, ranked by their mean over --best-at, SparseGPT always drawn):

    python bench/quality_table.py --model organism --calibration scenes --scene-qa --nsamples 64 \
        --sparsities 0.5,0.6,0.7,0.8 --nm 2:4 --scorers all --allocations all --tag pairs

Writes the stores under artifacts/quality/<model>[-<tag>]/ and the table (`tamp compare`) to
bench/results/quality_<model>[-<tag>].md, the plots beside it.
"""

from __future__ import annotations

import argparse
import json

import yaml
import subprocess
import sys
import time
from pathlib import Path

from tampkit.methods.presets import ALLOCATIONS, SCORERS

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
    parser.add_argument("--scorers", default="", help="'all' or comma-separated scorers (with --allocations: pairs)")
    parser.add_argument("--allocations", default="", help="'all' or comma-separated allocations")
    parser.add_argument("--tag", default="", help="suffix of the store and result names (keep tables apart)")
    parser.add_argument("--best", type=int, default=5, help="methods in the best-few plot")
    parser.add_argument("--best-at", default="0.6,0.7,0.8", help="sparsities the best few are ranked over")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other params.yaml key for every point (and the dense row), e.g. amia.scope=nontext")
    parser.add_argument("--scene-qa", action="store_true",
                        help="the organism's suite: scene questions (and agreement on them) instead of prose and photos")
    args = parser.parse_args()
    name = args.model + (f"-{args.tag}" if args.tag else "")
    root = ROOT / "artifacts" / "quality" / name
    scorers = list(SCORERS) if args.scorers == "all" else [s for s in args.scorers.split(",") if s]
    allocations = list(ALLOCATIONS) if args.allocations == "all" else [a for a in args.allocations.split(",") if a]
    overrides = {"model.name": args.model, "calibration.source": args.calibration,
                 "calibration.nsamples": args.nsamples, "evaluate.limit": args.limit}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
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
              f"nm_structures={[s for s in args.nm.split(',') if s]!r}, scorers={scorers or None!r}, "
              f"allocations={allocations or None!r})")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    out = ROOT / "bench" / "results" / f"quality_{name}.md"
    table = subprocess.run([sys.executable, "-m", "tampkit.cli", "compare", str(root), "--plot", str(out.with_suffix(""))],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout
    table = "\n".join(line for line in table.splitlines() if not line.startswith("wrote "))
    command = " ".join(["python", "bench/quality_table.py", *sys.argv[1:]])
    out.write_text(f"<!-- {command}; {time.perf_counter() - start:.0f} s on 2 CPU cores -->\n\n{table}\n")
    print(table)
    if scorers or allocations:
        plot_best_few(root, out.with_suffix(""), args)


def plot_best_few(root: Path, folder: Path, args: argparse.Namespace) -> None:
    """The best few methods (and SparseGPT) against sparsity, per headline metric, plus every row as JSON."""
    from tampkit.reporting.compare import best_methods, plot_scores, rows_from_folders

    rows = rows_from_folders([root])
    (folder / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    at = [float(s) for s in args.best_at.split(",")]
    for metric, higher in (("scene_accuracy", True), ("heldout_perplexity", False), ("agreement_top1", True)):
        if not any(metric in r for r in rows):
            continue
        best = best_methods(rows, metric, at, args.best, higher)
        keep = set(best) | {"sparsegpt", "dense"}
        path = plot_scores([r for r in rows if r["method"] in keep], metric, folder / f"best_{metric}_vs_sparsity.png")
        print(f"best {metric} over {at}: {', '.join(best)} -> {path}")


if __name__ == "__main__":
    main()
