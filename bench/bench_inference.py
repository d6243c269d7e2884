"""What pruning buys at inference: prefill and decode latency and peak memory of SmolLM2-135M, dense
and pruned (50/70/90% unstructured, 2:4), with the dense kernels and with torch's sparse kernels.

A benchmark, not a test. Each (point, kernel) runs in its own process (so its peak memory is its own),
side by side in one invocation; ratios are against the dense model with the dense kernel.

Kernels:
- `dense`: the pruned weights as they are saved (zeros at full width), `torch.nn.functional.linear`.
- `csr`: every pruned decoder Linear's weight as a `torch.sparse_csr` tensor (int32 indices: values +
  column index = 8 bytes per kept fp32 weight), `torch.sparse.mm(W, x^T)^T` (MKL's sparse GEMM on
  CPU; the dense weight is freed).
- `csr-linear`: the same CSR weight through `torch.nn.functional.linear(x, W)` (another code path).
- `cuda-dense`, `semi-structured` (CUDA only, fp16; "skipped: no CUDA" on a CPU machine): the dense
  kernel on the GPU, and for 2:4 `torch.sparse.to_sparse_semi_structured` (cuSPARSELt/CUTLASS). Their
  ratios are against the dense model with `cuda-dense`.

Masks are per-row magnitude (unstructured) or the two largest of each four inputs (2:4): the kernels'
speed depends on how many weights are kept and where, not on which method chose them.

Prefill: one forward over `--prompt` tokens (batch 1). Decode: `--new` greedy steps with the KV cache
after that prefill, ms per token. Best of `--repeats`. Peak memory: the process's resident set
sampled every 2 ms during the timed runs (model weights + activations + cache; freed heap handed back
to the OS first), how much of it the runs added, and the bytes the decoder Linears' weights take in
the kernel's format.

    python bench/bench_inference.py                                    # the full measurement (~10-20 min on 2 cores)
    python bench/bench_inference.py --points 0.5 --kernels dense,csr --prompt 32 --new 4 --repeats 1   # a quick look

Prints a markdown table and writes bench/results/bench_inference.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from tampkit.store.artifacts import write_json

DENSE = "dense"
POINTS = ("0.5", "0.7", "0.9", "2:4")
KERNELS = ("dense", "csr", "csr-linear", "cuda-dense", "semi-structured")
#: Kernels that need CUDA (fp16 there): the dense one is their reference.
CUDA_KERNELS = ("cuda-dense", "semi-structured")


# --- one (point, kernel) in this process ----------------------------------------------------------


def masks_for(weight: torch.Tensor, point: str) -> torch.Tensor:
    """True where the weight is pruned: the smallest magnitudes of each row, or 2 of every 4 inputs."""
    w = weight.detach().abs().float()
    if point == "2:4":
        groups = w.reshape(-1, 4)
        return torch.ones_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, False).view_as(w)
    k = int(round(w.shape[1] * float(point)))
    threshold = w.kthvalue(k, dim=1, keepdim=True).values
    return w <= threshold


class CSRLinear(torch.nn.Module):
    """A Linear whose weight is a sparse CSR tensor: `sparse.mm` or `F.linear` on it."""

    def __init__(self, linear: torch.nn.Linear, via_linear: bool) -> None:
        super().__init__()
        csr = linear.weight.detach().to_sparse_csr()  # int32 indices: 8 bytes per kept fp32 weight, not 12
        # own compact copies: to_sparse_csr's buffers can be sized for every weight, not the kept ones
        self.weight_csr = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(),
                                                  csr.values().clone(), csr.shape)
        self.bias = linear.bias
        self.via_linear = via_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.via_linear:
            return torch.nn.functional.linear(x, self.weight_csr, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def nbytes(self) -> int:
        w = self.weight_csr
        return sum(t.numel() * t.element_size() for t in (w.values(), w.col_indices(), w.crow_indices()))


def prepare(point: str, kernel: str):
    """SmolLM2-135M pruned at `point` with `kernel`'s Linears; (model, device, decoder weight bytes)."""
    from tampkit.models.adapters import find_linears
    from tampkit.models.loading import load_model

    import gc

    from tampkit.models import smollm2

    bundle = load_model("smollm2-135m")
    smollm2._load_state.cache_clear()  # the loader's per-process copy of the weights: not part of the model
    gc.collect()
    model = bundle.model.eval()
    _, layers = bundle.adapter.decoder_layers(model)
    device = torch.device("cpu")
    weight_bytes = 0
    with torch.no_grad():
        for block in layers:
            for name, linear in find_linears(block).items():
                if point != DENSE:
                    linear.weight[masks_for(linear.weight, point)] = 0
                if kernel in ("csr", "csr-linear"):
                    replacement = CSRLinear(linear, via_linear=kernel == "csr-linear")
                    parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                    setattr(parent, name.rsplit(".", 1)[-1], replacement)
                    weight_bytes += replacement.nbytes()
                else:
                    weight_bytes += linear.weight.numel() * linear.weight.element_size()
    if kernel in CUDA_KERNELS:
        device = torch.device("cuda")
        model = model.half().to(device)
        if kernel == "semi-structured":
            from torch.sparse import to_sparse_semi_structured

            weight_bytes = 0
            for block in layers:
                for linear in find_linears(block).values():
                    packed = to_sparse_semi_structured(linear.weight.detach())
                    linear.weight = torch.nn.Parameter(packed, requires_grad=False)
                    names, _ = packed.__tensor_flatten__()
                    weight_bytes += sum(getattr(packed, n).numel() * getattr(packed, n).element_size() for n in names)
        else:
            weight_bytes //= 2  # fp16
    gc.collect()  # the replaced dense weights
    release_freed_memory()
    return model, device, weight_bytes


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and the resident set would still
    count the dense weights a CSR kernel replaced)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRSS:
    """The process's resident set sampled every 2 ms while active (its peak, bytes)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def measure(point: str, kernel: str, prompt: int, new: int, repeats: int) -> dict:
    if kernel in CUDA_KERNELS and not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    if kernel == "semi-structured" and point != "2:4":
        return {"skipped": "2:4 only"}
    model, device, weight_bytes = prepare(point, kernel)
    ids = torch.randint(100, 40000, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prefill, decode = [], []
    start_rss = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        model(ids)  # warm-up
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            out = model(ids, use_cache=True)
            _sync(device)
            prefill.append(time.perf_counter() - start)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(new):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            _sync(device)
            decode.append((time.perf_counter() - start) / new)
    result = {"prefill_ms": 1000 * min(prefill), "decode_ms_per_token": 1000 * min(decode),
              "peak_rss_mib": rss.peak / 2**20, "rss_growth_mib": (rss.peak - start_rss) / 2**20,
              "linear_weight_mib": weight_bytes / 2**20,
              "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# --- the driver ----------------------------------------------------------------------------------


def run_worker(point: str, kernel: str, args: argparse.Namespace) -> dict:
    """One (point, kernel) in a fresh process; its JSON line back."""
    command = [sys.executable, __file__, "--worker", point, kernel, "--prompt", str(args.prompt), "--new", str(args.new),
               "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """Markdown: CPU rows against the dense model's `dense` row, CUDA rows against its `cuda-dense` row."""
    def base_for(kernel: str) -> dict | None:
        want = "cuda-dense" if kernel in CUDA_KERNELS else "dense"
        return next((r for r in rows if r["point"] == DENSE and r["kernel"] == want and "prefill_ms" in r), None)

    lines = ["| model | kernel | prefill ms | x dense | decode ms/token | x dense | peak RSS MiB | of which inference "
             "MiB | Linear weights MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = "dense" if r["point"] == DENSE else f"pruned {r['point']}"
        if "prefill_ms" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r.get('error', '')}"
            lines.append(f"| {label} | {r['kernel']} | {why} | | | | | | |")
            continue
        base = base_for(r["kernel"])
        pr = r["prefill_ms"] / base["prefill_ms"] if base else float("nan")
        dr = r["decode_ms_per_token"] / base["decode_ms_per_token"] if base else float("nan")
        lines.append(f"| {label} | {r['kernel']} | {r['prefill_ms']:.1f} | {pr:.2f} | {r['decode_ms_per_token']:.1f} | {dr:.2f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} | {r['linear_weight_mib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", default=",".join(POINTS), help="pruned points (the dense model is always run)")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    parser.add_argument("--new", type=int, default=32, help="decode steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_inference.json")
    parser.add_argument("--worker", nargs=2, metavar=("POINT", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.prompt, args.new, args.repeats)), flush=True)
        return
    kernels = args.kernels.split(",")
    runs = [(DENSE, k) for k in ("dense", "cuda-dense") if k == "dense" or k in kernels]
    runs += [(p, k) for p in args.points.split(",") for k in kernels]
    rows = []
    for point, kernel in runs:
        row = {"point": point, "kernel": kernel, **run_worker(point, kernel, args)}
        rows.append(row)
        print(f"{point} {kernel}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in row.items() if k not in ("point", "kernel")), flush=True)
    print(table(rows))
    result = {"bench": "inference", "model": "smollm2-135m", "python": platform.python_version(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "prompt": args.prompt,
              "new": args.new, "repeats": args.repeats, "rows": rows, "table": table(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)  # temp name, then rename
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
