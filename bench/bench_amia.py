"""AMIA per Linear and sample, Gram included: ours (`OutputGrams.stack` + `amia_select_batch`) against
bench/naive_amia.py (the official class's structure: three N x N products, MMD recomputed per pick),
at N tokens x d_out. Inputs are random but shaped like a LLaVA-NeXT sample (a few text tokens around
a run of image tokens, a peaked attention row); d_out 1536 is a widening Linear (d_in 576, no bias,
as SmolLM2's gate/up), so ours goes through W^T W there. Also times the plain `y @ y.T` Gram against
the tiled one (`symmetric_product`), and checks that both versions pick the same tokens.

    python bench/bench_amia.py [--tokens 128,256,512,1024,1500] [--dout 576,1536] [--repeats 5]

Best of `--repeats` wall times (ms); prints a table and writes bench/results/bench_amia.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from naive_amia import naive_amia_select  # noqa: E402

from tampkit.core.amia import AmiaParams, amia_select_batch  # noqa: E402
from tampkit.core.output_grams import OutputGrams, symmetric_product  # noqa: E402

D_IN = 576


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def case(n: int, d_out: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(D_IN, d_out, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(d_out, D_IN, generator=gen) / D_IN**0.5)
    x = torch.randn(n, D_IN, generator=gen) + 0.3 * torch.randn(1, D_IN, generator=gen)  # correlated tokens
    with torch.no_grad():
        y = linear(x)
    labels = torch.zeros(n, dtype=torch.int8)
    text = max(2, n // 10)
    labels[text // 2: n - text // 2] = 1  # image tokens in the middle, text around them
    attention = torch.softmax(torch.randn(n, generator=gen) * 3, 0)
    return linear, x, y, labels, attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="128,256,512,1024,1500")
    parser.add_argument("--dout", default="576,1536")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/bench_amia.json"))
    args = parser.parse_args()
    params = AmiaParams()
    rows = []
    for d_out in [int(v) for v in args.dout.split(",")]:
        for n in [int(v) for v in args.tokens.split(",")]:
            linear, x, y, labels, attention = case(n, d_out)
            grams = OutputGrams()
            grams.weight_gram(linear)  # once per block in the pipeline, not per sample

            def ours():
                return amia_select_batch(grams.stack([(linear, x, y)]), attention, labels, params)[0]

            def naive():
                return naive_amia_select(None, attention, labels, params, y=y)

            unit = torch.nn.functional.normalize(y, dim=1)
            out = torch.empty(n, n)
            row = {"tokens": n, "d_out": d_out, "widening": d_out > D_IN,
                   "ours_ms": best_ms(ours, args.repeats), "naive_ms": best_ms(naive, args.repeats),
                   "gram_plain_ms": best_ms(lambda: torch.matmul(unit, unit.T, out=out), args.repeats),
                   "gram_tiled_ms": best_ms(lambda: symmetric_product(unit, unit, out), args.repeats),
                   "selected": len(ours()), "same_picks": ours().tolist() == naive().tolist()}
            row["speedup"] = row["naive_ms"] / row["ours_ms"]
            rows.append(row)
            print(f"N={n:5d} d_out={d_out}: ours {row['ours_ms']:7.2f} ms, naive {row['naive_ms']:8.2f} ms "
                  f"({row['speedup']:.1f}x), picks equal {row['same_picks']}", flush=True)
    print("\n| N | d_out | ours ms | naive ms | speed-up | Gram y@y.T ms | Gram tiled ms | selected | same picks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['d_out']}{' (W^T W)' if r['widening'] else ''} | {r['ours_ms']:.2f} | "
              f"{r['naive_ms']:.2f} | {r['speedup']:.1f}x | {r['gram_plain_ms']:.2f} | {r['gram_tiled_ms']:.2f} | "
              f"{r['selected']} | {r['same_picks']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                     "machine": platform.machine(), "d_in": D_IN, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
