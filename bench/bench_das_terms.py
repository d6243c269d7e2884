"""DAS terms of one sample's block outputs: the full cosine Gram (`OutputGrams.stack` +
`similarity_terms_batch`, the code before issue 20) against per-modality blocks and sums
(`tampkit.core.das_terms`), side by side in one run, on SmolLM2-135M's Linear shapes.

    python bench/bench_das_terms.py            # image tokens 128..1500 beside 50 text tokens

Random inputs (seeded); both paths see the same tensors. Prints a table and writes
bench/results/bench_das_terms.json. Run it alone: the ratio is what to read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tampkit.core.das_terms import das_terms  # noqa: E402
from tampkit.core.diversity import similarity_terms_batch  # noqa: E402
from tampkit.core.output_grams import OutputGrams  # noqa: E402

#: SmolLM2-135M's decoder Linears: (d_in, d_out), no bias.
SHAPES = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576), "gate": (576, 1536),
          "up": (576, 1536), "down": (1536, 576)}


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    torch.manual_seed(0)
    linears = {n: torch.nn.Linear(i, o, bias=False) for n, (i, o) in SHAPES.items()}
    rows = []
    for n_image in (128, 576, 1000, 1500):
        n = n_image + 50
        labels = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(n_image, dtype=torch.long),
                            torch.zeros(25, dtype=torch.long)])
        items = []
        for linear in linears.values():
            x = torch.randn(n, linear.in_features)
            items.append((linear, x, linear(x).detach()))

        def full() -> None:
            similarity_terms_batch(OutputGrams().stack(items), labels, True)

        def blocks() -> None:
            wtw = {}
            for linear, x, y in items:
                if linear.out_features > linear.in_features:
                    wtw[id(linear)] = linear.weight.detach().T @ linear.weight.detach()
                das_terms(linear, x, y, labels, True, wtw.get(id(linear)))

        with torch.no_grad():
            t_full, t_blocks = _best(full), _best(blocks)
        rows.append({"tokens": n, "image_tokens": n_image, "full_gram_ms": t_full * 1e3, "blocks_ms": t_blocks * 1e3,
                     "speedup": t_full / t_blocks})
    print(f"DAS terms of one sample, 7 SmolLM2-135M Linears, {torch.get_num_threads()} threads\n")
    print("| tokens (image + 50 text) | full Gram (ms) | per-modality blocks + sums (ms) | speedup |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} ({r['image_tokens']} + 50) | {r['full_gram_ms']:.1f} | {r['blocks_ms']:.1f} | {r['speedup']:.2f}x |")
    out = ROOT / "bench" / "results" / "bench_das_terms.json"
    out.write_text(json.dumps({"command": "python bench/bench_das_terms.py", "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
