"""Checkpoint size on disk, dense vs `--save-format compressed` (tampkit/models/compressed.py).

For each model and sparsity the pipeline prunes with Wanda (`tamp prune`'s stages, calibration shared
per model through a work folder) and saves compressed; the prune stage measured the dense save of the
same masks before compressing it (the report's `compression.dense_bytes`). Two views:

- total: the weight files (`*.safetensors`, the bit-packed masks file aside), dense vs compressed;
- decoder Linears: the pruned weights only, dense (numel x dtype width) vs their stored parts
  (values + bitmask + row offsets + shape), and bits per weight.

    python bench/bench_checkpoint_size.py [--models smollm2-135m,smollm2-llava-next] [--points 0.5,0.7,2:4]
                                          [--nsamples 8] [--out bench/results/bench_checkpoint_size.json]

Which weights Wanda keeps does not move the sizes (only how many), so a few calibration samples do.
Prints a markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

from safetensors import safe_open

from tampkit.models import compressed as C
from tampkit.pipeline.params import params_from_flat
from tampkit.pipeline.prune_command import prune_to_folder
from tampkit.store.artifacts import write_json


def decoder_linear_bytes(folder: Path) -> dict[str, int | str]:
    """The compressed Linears of a compressed folder: their dense bytes (numel x the dtype's width),
    the bytes of their stored parts, their weight count and dtype."""
    targets = set(C.sparsity_config(folder)["targets"])
    stored = numel = dense = 0
    dtype = ""
    for name in C.weight_files(folder):
        with safe_open(str(folder / name), "pt") as handle:
            for key in handle.keys():
                module, _, part = key.rpartition(".")
                if module not in targets:
                    continue
                tensor = handle.get_tensor(key)
                stored += tensor.numel() * tensor.element_size()
                if part == "compressed":
                    dtype, width = str(tensor.dtype).removeprefix("torch."), tensor.element_size()
                    shape = handle.get_tensor(f"{module}.shape").flatten()
                    numel += int(shape.prod())
                    dense += int(shape.prod()) * width
    return {"dense": dense, "stored": stored, "numel": numel, "dtype": dtype}


def run_point(model: str, point: str, nsamples: int, root: Path) -> dict:
    structure, sparsity = ("2:4", 0.5) if point == "2:4" else ("unstructured", float(point))
    flat = {"model.name": model, "prune.method": "wanda", "prune.sparsity": sparsity, "prune.structure": structure,
            "prune.save_format": "compressed", "calibration.nsamples": nsamples, "report.plots": False}
    out = root / f"{model}-{point.replace(':', 'of')}"
    start = time.perf_counter()
    report = prune_to_folder(params_from_flat(flat), out, workdir=root / f"work-{model}", progress=False)
    seconds = time.perf_counter() - start
    linears = decoder_linear_bytes(out)
    comp = report["compression"]
    row = {"model": model, "point": point, "format": comp["format"], "dtype": linears["dtype"],
           "achieved_sparsity": report["achieved_sparsity"],
           "total_dense_bytes": comp["dense_bytes"], "total_compressed_bytes": comp["compressed_bytes"],
           "total_ratio": comp["compressed_bytes"] / comp["dense_bytes"],
           "linear_dense_bytes": linears["dense"], "linear_compressed_bytes": linears["stored"],
           "linear_ratio": linears["stored"] / linears["dense"],
           "linear_bits_per_weight": 8 * linears["stored"] / linears["numel"], "seconds": seconds}
    shutil.rmtree(out, ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    mib = 2**20
    lines = ["| model | sparsity | format | dtype | total dense MiB | total compressed MiB | ratio | "
             "decoder Linears dense MiB | compressed MiB | ratio | bits/weight |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['point']} | {r['format']} | {r['dtype']} | {r['total_dense_bytes'] / mib:.1f} | "
                     f"{r['total_compressed_bytes'] / mib:.1f} | {r['total_ratio']:.3f} | {r['linear_dense_bytes'] / mib:.1f} | "
                     f"{r['linear_compressed_bytes'] / mib:.1f} | {r['linear_ratio']:.3f} | {r['linear_bits_per_weight']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2-135m,smollm2-llava-next")
    parser.add_argument("--points", default="0.5,0.7,2:4", help="unstructured sparsities and/or 2:4")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_checkpoint_size.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-size-") as tmp:
        for model in args.models.split(","):
            for point in args.points.split(","):
                rows.append(run_point(model, point, args.nsamples, Path(tmp)))
                print(f"{model} {point}: {rows[-1]['linear_ratio']:.3f} of the dense decoder Linears "
                      f"({rows[-1]['seconds']:.0f}s)", flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "checkpoint_size", "python": platform.python_version(), "nsamples": args.nsamples, "rows": rows,
              "table": table(rows)}
    write_json(args.out, result)  # temp name, then rename
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
