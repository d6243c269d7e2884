"""How many weights each matrix loses. Counting is in integers so budgets are exact."""

from __future__ import annotations

import math
from fractions import Fraction

from tampkit.errors import UsageError


def exact_fraction(sparsity: float) -> Fraction:
    """The decimal the user typed (0.7 -> 7/10), not its binary float approximation."""
    return Fraction(repr(float(sparsity)))


def validate_sparsity(sparsity: float) -> float:
    if not (isinstance(sparsity, (int, float)) and math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise UsageError("--sparsity", f"must be in [0, 1), got {sparsity}", "0 <= sparsity < 1")
    return float(sparsity)


def uniform_prune_counts(sizes: dict[str, int], sparsity: float) -> dict[str, int]:
    """floor(n_k * s) pruned weights per matrix: every matrix at the same ratio."""
    s = exact_fraction(sparsity)
    return {name: math.floor(n * s) for name, n in sizes.items()}


def water_filling_keep(sizes: dict[str, int], scores: dict[str, float], sparsity: float,
                       max_sparsity: float) -> dict[str, int]:
    """DAS allocation (ECoFLaP's water-filling, as in TAMP's code, with its defects fixed).

    Keeps exactly floor(N * (1 - s)) weights overall; no matrix keeps fewer than
    ceil(n_k * (1 - s_max)); the rest of the budget is poured in proportion to the scores, and a
    matrix that fills up drops out of the race. Integer counting (the official code sums in
    float32 and adds its overshoot instead of removing it).
    """
    s = exact_fraction(sparsity)
    s_max = min(exact_fraction(max_sparsity), Fraction(1))
    budget = math.floor(sum(sizes.values()) * (1 - s))
    keep = {k: math.ceil(n * (1 - s_max)) for k, n in sizes.items()}
    floor_keep = dict(keep)
    live = {k: float(scores[k]) for k in sizes if keep[k] < sizes[k] and scores[k] > 0}
    while sum(keep.values()) < budget and live:
        remaining = budget - sum(keep.values())
        total = sum(live.values())
        for k in list(live):
            keep[k] = min(sizes[k], keep[k] + math.ceil(live[k] / total * remaining))
            if keep[k] == sizes[k]:
                del live[k]
    # ceil() overshoots by at most one weight per matrix: take them back from the fullest ratios.
    # Only when the s_max floors alone exceed the budget (tiny matrices) may a floor give way.
    excess = sum(keep.values()) - budget
    order = sorted(sizes, key=lambda k: (-keep[k] / sizes[k], k))
    for lower in (floor_keep, dict.fromkeys(sizes, 0)):
        while excess > 0 and any(keep[k] > lower[k] for k in order):
            for k in order:
                if excess and keep[k] > lower[k]:
                    keep[k] -= 1
                    excess -= 1
    # With every score zero nothing was poured: fill in order, still exact.
    deficit = budget - sum(keep.values())
    for k in sorted(sizes):
        add = min(deficit, sizes[k] - keep[k])
        keep[k] += add
        deficit -= add
    return keep


def outlier_ratio(scores: list, threshold: float = 5.0) -> float:
    """OWL's layer outlier ratio: percent of a block's Wanda scores above threshold x their mean."""
    import torch

    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > threshold * flat.mean()).sum()) / flat.numel() * 100.0


def owl_block_sparsities(ratios: list[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al., 2024): blocks with more outliers keep more weights.

    Outlier ratios are min-max scaled to [0, 2*lam] as keep ratios, then shifted so their mean is
    1 - s; a block's sparsity is 1 - its keep ratio (mean s, span 2*lam, as in OWL's code).
    """
    lo, hi = min(ratios), max(ratios)
    if hi == lo:
        return [float(sparsity)] * len(ratios)
    scaled = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [1.0 - (v - mean + (1.0 - sparsity)) for v in scaled]
