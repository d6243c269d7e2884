"""Wall time and peak memory of wanda, tamp, tamp with cached dense statistics, and tamp with the
naive (official-style) AMIA, on smollm2-llava-next with image calibration samples (>= 500 image
tokens each); and the one-pass variants under dense propagation (issue 20): `wanda-1pass` (the masks
stage's one forward per block) and `tamp-1pass` (the stats stage's one forward per block measures
the DAS terms and AMIA-Wanda's scalers; the masks follow from the stored scalers, no forward).
Each variant runs in its own process so peak RSS is its own.

    python bench/bench_tamp.py [--nsamples 16] [--variants wanda,tamp,...] [--json bench/results/bench_tamp.json]

Prints a table; ratios are against wanda (and the one-pass ones against wanda-1pass) measured in
the same invocation.
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

VARIANTS = ("wanda", "tamp", "tamp-cached", "tamp-naive-amia", "wanda-1pass", "tamp-1pass", "amia", "das")
#: Run by default (amia and das on request).
DEFAULT = ("wanda", "tamp", "tamp-cached", "tamp-naive-amia", "wanda-1pass", "tamp-1pass")


def run_variant(variant: str, nsamples: int, cache: Path, out: Path) -> dict:
    """One variant in this process: prune phases timed by the report; picks agreement for naive."""
    import torch

    import shutil

    from tampkit.pipeline.params import params_from_flat
    from tampkit.pipeline.prune_command import prune_to_folder

    torch.manual_seed(0)
    agreement = {"same": 0, "total": 0}
    if variant == "tamp-naive-amia":
        sys.path.insert(0, str(Path(__file__).parent))
        from naive_amia import naive_amia_select

        from tampkit.methods.amia_wanda import AmiaWanda

        fast_select = AmiaWanda.select

        def naive_select(self, names, attention, labels):  # the naive one decides; count agreement
            picks = [naive_amia_select(None, attention, labels, self.params, y=self.pending[n][2]) for n in names]
            if agreement["total"] < 200:
                fast = fast_select(self, names, attention, labels)
                agreement["same"] += sum(int(torch.equal(a, b)) for a, b in zip(picks, fast))
                agreement["total"] += len(names)
            return picks

        AmiaWanda.select = naive_select
    method = variant.split("-")[0]
    propagation = "dense" if variant.endswith("-1pass") else "pruned"
    params = params_from_flat({"model.name": "smollm2-llava-next", "prune.method": method, "prune.sparsity": 0.5,
                               "calibration.nsamples": nsamples, "calibration.source": "builtin-images",
                               "prune.propagation": propagation, "report.plots": False})
    cached = variant == "tamp-cached"
    if cached:  # the "tamp" variant's store: keep its calibration and dense statistics, redo the rest
        for folder in ("allocation", "masks", "pruned", "reports"):
            shutil.rmtree(cache / folder, ignore_errors=True)
    start = time.perf_counter()
    report = prune_to_folder(params, out, overwrite=True, workdir=cache if variant in ("tamp", "tamp-cached") else None,
                             progress=False)
    seconds = report["seconds"]
    pruning = sum(v for k, v in seconds.items() if k in ("stats", "allocate", "masks") and not (cached and k == "stats"))
    result = {"variant": variant, "pruning_s": pruning, "phases": seconds, "wall_s": time.perf_counter() - start,
              "peak_rss_mib": report["peak_rss_bytes"] / 2**20, "achieved": report["achieved_sparsity"],
              "stats_cached": cached, "propagation": propagation}
    tokens = [b.get("amia_selected_tokens") for b in report["blocks"] if b.get("amia_selected_tokens")]
    if tokens:
        result["mean_selected"] = {m: sum(t[m] for t in tokens) / len(tokens) for m in tokens[0]}
    if agreement["total"]:
        result["picks_equal_to_fast"] = f"{agreement['same']}/{agreement['total']}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--variants", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, default=Path("bench/results/bench_tamp.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_variant(args.one, args.nsamples, args.cache, Path(tmp) / "out")))
        return

    from tampkit.calibration import load_calibration
    from tampkit.models import load_model

    bundle = load_model("smollm2-llava-next")
    samples = load_calibration("builtin-images", args.nsamples, 42)
    image_tokens = [int((bundle.adapter.modality_labels(bundle.model, bundle.adapter.encode(bundle, s)["input_ids"]) == 1).sum())
                    for s in samples]
    print(f"{len(samples)} samples, image tokens per sample: min {min(image_tokens)}, max {max(image_tokens)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for variant in args.variants.split(","):
            command = [sys.executable, __file__, "--one", variant, "--nsamples", str(args.nsamples), "--cache", cache]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if done.returncode != 0:
                sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {variant}: {results[-1]['pruning_s']:.1f} s", flush=True)
    seconds = {r["variant"]: r["pruning_s"] for r in results}
    for r in results:
        if "wanda" in seconds:
            r["x_wanda"] = r["pruning_s"] / seconds["wanda"]
        if r["variant"].endswith("-1pass") and "wanda-1pass" in seconds:
            r["x_wanda_1pass"] = r["pruning_s"] / seconds["wanda-1pass"]
    print("\n| variant | propagation | pruning s | x wanda | x wanda-1pass | peak RSS MiB | achieved | mean tokens selected |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        selected = ", ".join(f"{k} {v:.1f}" for k, v in r.get("mean_selected", {}).items())
        ratio = lambda key: f"{r[key]:.2f}" if key in r else ""  # noqa: E731
        print(f"| {r['variant']} | {r['propagation']} | {r['pruning_s']:.1f} | {ratio('x_wanda')} | {ratio('x_wanda_1pass')} | "
              f"{r['peak_rss_mib']:.0f} | {r['achieved']:.6f} | {selected} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"nsamples": args.nsamples, "image_tokens": image_tokens, "results": results},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
