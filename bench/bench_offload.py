"""Peak memory and wall time of `tamp prune` with the model in memory and with `--offload disk`.

    python bench/bench_offload.py                 # ~1B-parameter synthetic LLaVA-NeXT (bf16), wanda and tamp
    python bench/bench_offload.py --size 100m     # the same at ~100M parameters: a quick check

A synthetic LLaVA-NeXT (seeded random weights: a Llama language model of the chosen size, a small
CLIP-style tower at low resolution, the byte tokenizer) is built once and saved in shards under
artifacts/bench/synthetic-llava-<size>; a folder already there is reused. Then, for each method,
`tamp prune` runs in a fresh process in memory and with `--offload disk` (4 built-in image
conversations, 50%), each measured by the kernel's peak resident size of that process (wait4's
ru_maxrss) and its wall time. Two processes that load no model give the baselines: one imports
torch and tampkit, one imports everything `tamp prune` imports. Both checkpoints are then compared
tensor by tensor (and their masks bit by bit). Prints a table, writes bench/results/bench_offload.json.

Target (issue 19): with offload, peak RSS at most a quarter of the weights' size beyond the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tampkit.models.offload import INDEX_FILE, SINGLE_FILE, Checkpoint, read_header, read_tensor  # noqa: E402
from tampkit.store.artifacts import MASKS_FILE, REPORT_FILE  # noqa: E402

#: Language-model shapes per --size (Llama-style, GQA); the vision tower is the same small one.
SIZES: dict[str, dict[str, int]] = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=32000),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000),
}
PATCH = 14
SEED = 2024
#: What `tamp prune` imports before it loads a model (the second baseline).
IMPORTS = ("import torch, transformers, tampkit.cli, tampkit.pipeline.run, tampkit.pipeline.prune_command, "
           "tampkit.pipeline.stages.calibrate, tampkit.pipeline.stages.stats, tampkit.pipeline.stages.allocate, "
           "tampkit.pipeline.stages.masks, tampkit.pipeline.stages.prune, tampkit.models.offload; "
           "transformers.LlavaNextForConditionalGeneration, transformers.LlavaNextProcessor")


def build(folder: Path, size: str, dtype: str, image_size: int, layers: int | None = None) -> dict[str, Any]:
    """The synthetic LLaVA-NeXT saved in shards under `folder` (skipped when its spec is there)."""
    import transformers as tf

    from tampkit.models.tiny import llava_next_processor
    from tampkit.models.tokenizer import byte_tokenizer

    shapes = {**SIZES[size], **({"num_hidden_layers": layers} if layers else {})}
    spec = {"size": size, "dtype": dtype, "image_size": image_size, "seed": SEED, **shapes}
    marker = folder / "bench_spec.json"
    if marker.exists() and json.loads(marker.read_text()).get("spec") == spec:
        return json.loads(marker.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    tokenizer = byte_tokenizer(("<image>",))
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = tf.LlavaNextConfig(
        text_config=dict(model_type="llama", max_position_embeddings=4096, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, **shapes),
        vision_config=dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024,
                           num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=PATCH,
                           projection_dim=256),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2, tie_word_embeddings=False)
    started = time.perf_counter()
    torch.manual_seed(SEED)
    model = tf.LlavaNextForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype)).eval()
    parameters = sum(p.numel() for p in model.parameters())
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, max_shard_size="500MB")
    llava_next_processor(tokenizer, image_size, PATCH, pinpoints).save_pretrained(tmp)
    del model
    info = {"spec": spec, "parameters": parameters, "build_seconds": round(time.perf_counter() - started, 1)}
    (tmp / marker.name).write_text(json.dumps(info, indent=2))
    os.replace(tmp, folder)
    return info


def weights_bytes(folder: Path) -> int:
    return sum(e.nbytes for e in Checkpoint(folder).entries.values())


#: Prologue of every measured process: at exit it writes its own peak resident size (VmHWM, KiB)
#: to $BENCH_PEAK_FILE. Not wait4's ru_maxrss: Linux carries the launching process's peak across
#: fork and exec into the child's, so a child of a big parent would report the parent's size.
PEAK = ("import atexit, os, runpy, sys\n"
        "def _peak():\n"
        "    with open('/proc/self/status') as f:\n"
        "        kib = next(line for line in f if line.startswith('VmHWM')).split()[1]\n"
        "    open(os.environ['BENCH_PEAK_FILE'], 'w').write(kib)\n"
        "atexit.register(_peak)\n")
#: Runs the module named by the first argument as `python -m` would.
RUN_MODULE = "sys.argv = sys.argv[1:]\nrunpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"


def measure(body: str, args: list[str], log: Path) -> dict[str, Any]:
    """Run `python -c PEAK+body args` in a fresh process: its wall time and its own peak resident size."""
    peak = log.with_suffix(".peak")
    peak.unlink(missing_ok=True)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "BENCH_PEAK_FILE": str(peak)}
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-c", PEAK + body, *args], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0 or not peak.exists():
        raise SystemExit(f"{' '.join(args)} failed ({code}); see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_seconds": round(wall, 1), "peak_rss_bytes": int(peak.read_text()) * 1024}


def identical(a: Path, b: Path) -> bool:
    """The two checkpoints hold the same tensors, bit for bit (read one at a time), and the same masks."""
    left, right = Checkpoint(a), Checkpoint(b)
    if left.entries.keys() != right.entries.keys():
        return False
    for key in left.entries:
        x, y = left.read([key])[key], right.read([key])[key]
        if x.dtype != y.dtype or not torch.equal(x, y):
            return False
    masks_a, meta_a = read_header(a / MASKS_FILE)
    masks_b, meta_b = read_header(b / MASKS_FILE)
    if masks_a.keys() != masks_b.keys() or json.loads(meta_a["shapes"]) != json.loads(meta_b["shapes"]):
        return False
    with open(a / MASKS_FILE, "rb") as fa, open(b / MASKS_FILE, "rb") as fb:
        return all(torch.equal(read_tensor(fa, masks_a[k]), read_tensor(fb, masks_b[k])) for k in masks_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--image-size", type=int, default=112, help="CLIP tile side in px (anyres up to 2 tiles)")
    parser.add_argument("--layers", type=int, default=None,
                        help="fewer decoder blocks of the same shapes: the same per-block peak, sooner")
    parser.add_argument("--methods", nargs="+", default=["wanda", "tamp"])
    parser.add_argument("--offloads", nargs="+", choices=("none", "disk"), default=["none", "disk"])
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--keep", action="store_true", help="keep the pruned checkpoints")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/bench_offload.json (1b), bench_offload-SIZE.json otherwise")
    args = parser.parse_args()
    name = args.size + (f"-{args.layers}l" if args.layers else "") + ("" if args.dtype == "bfloat16" else f"-{args.dtype}")
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("bench_offload.json" if name == "1b" else f"bench_offload-{name}.json")
    model = args.cache / f"synthetic-llava-{name}"
    args.cache.mkdir(parents=True, exist_ok=True)
    per_param = 2 if args.dtype == "bfloat16" else 4
    estimate = {"1b": 1.0e9, "100m": 1.1e8}[args.size] * per_param  # (an upper bound with --layers)
    free = shutil.disk_usage(args.cache).free
    need = estimate * (1 + 2) * 1.2  # the model, then two pruned checkpoints at a time
    if free < need:
        raise SystemExit(f"{args.cache}: {free / 2**30:.1f} GiB free, need about {need / 2**30:.1f} GiB")
    print(f"model: {model} ({'building' if not (model / 'bench_spec.json').exists() else 'reusing'})", flush=True)
    info = build(model, args.size, args.dtype, args.image_size, args.layers)
    size = weights_bytes(model)
    full = size  # with --layers: the weights of the model with every block, for the target
    if args.layers:
        entries = Checkpoint(model).entries
        block = sum(e.nbytes for k, e in entries.items() if ".layers.0." in k and "vision" not in k)
        full = size + (SIZES[args.size]["num_hidden_layers"] - args.layers) * block
    logs = args.cache / "offload-logs"
    logs.mkdir(exist_ok=True)

    baselines = {
        "torch+tampkit": measure("import torch, tampkit", [], logs / "baseline-torch.log"),
        "tamp prune imports": measure(IMPORTS, [], logs / "baseline-imports.log"),
    }
    baseline = baselines["tamp prune imports"]["peak_rss_bytes"]
    runs, checks = [], {}
    for method in args.methods:
        outs = {}
        for offload in args.offloads:
            out = args.cache / f"pruned-{name}-{method}-{offload}"
            command = ["tampkit.cli", "prune", "--model", str(model), "--method", method,
                       "--sparsity", "0.5", "--calibration", "builtin-images", "--nsamples", str(args.nsamples),
                       "--offload", offload, "--no-plots", "--no-progress", "--out", str(out), "--overwrite"]
            print(f"{method:6s} offload={offload:4s} ...", end=" ", flush=True)
            result = measure(RUN_MODULE, command, logs / f"{name}-{method}-{offload}.log")
            report = json.loads((out / REPORT_FILE).read_text())
            sharded = (out / INDEX_FILE).exists() and not (out / SINGLE_FILE).exists()
            beyond = result["peak_rss_bytes"] - baseline
            runs.append({"method": method, "offload": offload, **result, "beyond_baseline_bytes": beyond,
                         "beyond_over_weights": round(beyond / size, 4), "written_block_by_block": sharded,
                         "stage_seconds": report.get("seconds"), "achieved_sparsity": report["achieved_sparsity"],
                         "command": "tamp " + " ".join(os.path.relpath(c, ROOT) if c in (str(model), str(out)) else c
                                                       for c in command[1:])})
            print(f"{result['wall_seconds']:7.1f} s, peak {result['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
            outs[offload] = out
        checks[method] = identical(outs["none"], outs["disk"]) if len(outs) == 2 else None
        if not args.keep:
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)

    offloaded = [r for r in runs if r["offload"] == "disk"]
    results = {
        "model": {"folder": os.path.relpath(model, ROOT), "parameters": info["parameters"], "dtype": args.dtype,
                  "weights_bytes": size, "image_size": args.image_size,
                  "language_model": {**SIZES[args.size], **({"num_hidden_layers": args.layers} if args.layers else {})}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "nsamples": args.nsamples, "baselines": baselines, "baseline_used": "tamp prune imports", "runs": runs,
        "bit_identical": checks,
        "target": {"weights_bytes": full, "beyond_baseline_at_most": full // 4,
                   "met": all(r["beyond_baseline_bytes"] <= full / 4 for r in offloaded) and bool(offloaded)},
        "command": f"python bench/bench_offload.py --size {args.size} --dtype {args.dtype} --image-size {args.image_size} "
                   f"--nsamples {args.nsamples} --methods {' '.join(args.methods)} --offloads {' '.join(args.offloads)}"
                   + (f" --layers {args.layers}" if args.layers else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    gib = 2**30
    print(f"\nweights {size / gib:.2f} GiB ({info['parameters'] / 1e6:.0f}M parameters, {args.dtype}); baselines: "
          + ", ".join(f"{k} {v['peak_rss_bytes'] / gib:.2f} GiB" for k, v in baselines.items()))
    print(f"{'method':8s} {'offload':8s} {'wall s':>8s} {'peak GiB':>9s} {'beyond GiB':>11s} {'/weights':>9s}  shards  identical")
    for r in runs:
        print(f"{r['method']:8s} {r['offload']:8s} {r['wall_seconds']:8.1f} {r['peak_rss_bytes'] / gib:9.2f} "
              f"{r['beyond_baseline_bytes'] / gib:11.2f} {r['beyond_over_weights']:9.3f}  "
              f"{'yes' if r['written_block_by_block'] else 'no':6s}  {'-' if checks[r['method']] is None else checks[r['method']]}")
    whose = f"the {SIZES[args.size]['num_hidden_layers']}-block model's " if args.layers else ""
    print(f"target (offload: beyond baseline <= {whose}weights/4 = {full / 4 / gib:.2f} GiB): "
          f"{'met' if results['target']['met'] else 'NOT met'}; wrote {os.path.relpath(args.out, ROOT)}")
    if not all(r["written_block_by_block"] for r in offloaded):
        print("warning: an --offload disk run wrote a single-file checkpoint: the model was not offloaded "
              "(does tampkit/pipeline/stages/context.py key its model cache on model.offload?)")


if __name__ == "__main__":
    main()
