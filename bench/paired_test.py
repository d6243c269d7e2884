"""Paired comparison of two pruned models on the same scene questions (McNemar's exact test).

Two accuracies 0.004 apart on 1566 questions say nothing alone (one standard error is ~0.012); what
matters is how many questions one model gets right and the other wrong. For each pair of sweep
points this prints those two counts, the net difference and the exact two-sided binomial p-value
of the discordant questions:

    python bench/paired_test.py artifacts/quality/organism-pairs sparsegpt:sparsegpt+das sparsegpt:amia-sparsegpt \\
        --sparsities 0.6,0.7,0.8

Each point is read from <root>/<method>-<sparsity>/metrics/samples.json (the evaluate stage's
per-question log). Writes nothing; the table goes to stdout (markdown).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def correct_by_question(store: Path) -> dict[str, bool]:
    """Question id -> answered correctly, from a store's scene-QA log."""
    items = json.loads((store / "metrics" / "samples.json").read_text())["scene_qa"]
    return {item["id"]: bool(item["correct"]) for item in items}


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact p-value of `wins` against `losses` discordant pairs under p = 1/2."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def compare(root: Path, base: str, other: str, sparsity: str) -> dict[str, float]:
    """Paired counts of `other` against `base` at one sparsity."""
    a = correct_by_question(root / f"{base}-{sparsity}")
    b = correct_by_question(root / f"{other}-{sparsity}")
    if a.keys() != b.keys():
        raise SystemExit(f"{base}-{sparsity} and {other}-{sparsity} did not answer the same questions")
    wins = sum(1 for q in a if b[q] and not a[q])
    losses = sum(1 for q in a if a[q] and not b[q])
    return {"wins": wins, "losses": losses, "questions": len(a), "p": mcnemar_exact(wins, losses),
            "base_accuracy": sum(a.values()) / len(a), "accuracy": sum(b.values()) / len(b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep's folder (one store per <method>-<sparsity>)")
    parser.add_argument("pairs", nargs="+", help="BASE:OTHER method labels, e.g. sparsegpt:sparsegpt+das")
    parser.add_argument("--sparsities", default="0.6,0.7,0.8")
    args = parser.parse_args()
    print("| other | base | sparsity | other acc | base acc | other only right | base only right | net | p (McNemar) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        base, _, other = pair.partition(":")
        for sparsity in args.sparsities.split(","):
            r = compare(args.root, base, other, sparsity)
            print(f"| {other} | {base} | {sparsity} | {r['accuracy']:.4f} | {r['base_accuracy']:.4f} | {r['wins']} | "
                  f"{r['losses']} | {r['wins'] - r['losses']:+d} | {r['p']:.2g} |")


if __name__ == "__main__":
    main()
