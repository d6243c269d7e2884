"""How many weights each matrix loses. Counting is in integers so budgets are exact."""

from __future__ import annotations

import math
from fractions import Fraction



def exact_fraction(sparsity: float) -> Fraction:
    """The decimal the user typed (0.7 -> 7/10), not its binary float approximation."""
    return Fraction(repr(float(sparsity)))


def uniform_prune_counts(sizes: dict[str, int], sparsity: float) -> dict[str, int]:
    """Every matrix at ratio s: floor(n_k * s) or one more, so that the total is floor(N * s).

    Per-matrix floors alone would lose up to one weight per matrix against the global target;
    the largest fractional remainders get the extra weight (ties by name), as in every allocation.
    """
    s = exact_fraction(sparsity)
    return _largest_remainders(sizes, {name: n * s for name, n in sizes.items()}, math.floor(sum(sizes.values()) * s))


def _largest_remainders(sizes: dict[str, int], wanted: dict, budget: int) -> dict[str, int]:
    """Integer counts in [0, n_k] near `wanted` (exact Fractions or floats) summing to `budget`."""
    counts = {k: min(max(math.floor(v), 0), sizes[k]) for k, v in wanted.items()}
    gap = budget - sum(counts.values())
    step = 1 if gap > 0 else -1
    order = sorted(sizes, key=lambda k: (-(wanted[k] - counts[k]) * step, k))
    while gap != 0:
        moved = False
        for k in order:
            if gap == 0:
                break
            if 0 <= counts[k] + step <= sizes[k]:
                counts[k] += step
                gap -= step
                moved = True
        if not moved:
            raise ValueError(f"{budget} pruned weights do not fit in matrices of {sum(sizes.values())}")
    return counts


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


def outlier_ratio(scores: list, threshold: float) -> float:
    """OWL's layer outlier ratio: percent of a block's Wanda scores above threshold x their mean."""
    import torch

    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > threshold * flat.mean()).sum()) / flat.numel() * 100.0


def owl_block_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
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


def das_prune_counts(sizes: dict[str, int], diversities: dict[str, float], sparsity: float,
                     s_max_offset: float, size_weighted: bool) -> dict[str, int]:
    """Pruned weights per matrix under DAS: water-filling on D_k (official) or D_k * n_k."""
    scores = {k: diversities[k] * (sizes[k] if size_weighted else 1) for k in sizes}
    s_max = float(exact_fraction(sparsity) + exact_fraction(s_max_offset))
    keep = water_filling_keep(sizes, scores, sparsity, s_max)
    return {k: sizes[k] - keep[k] for k in sizes}


def ecoflap_prune_counts(sizes: dict[str, int], blocks: dict[str, int], block_scores: list[float], sparsity: float,
                         s_max_offset: float) -> dict[str, int]:
    """Pruned weights per matrix under ECoFLaP (block granularity): the blocks' keep counts by
    water-filling on their scores (s_max = s + offset, as DAS), each block's pruned count spread
    over its matrices in proportion to their sizes (largest remainders: the block's total is exact).

    `blocks` maps each matrix to its block index, `block_scores` is indexed by block.
    """
    block_sizes: dict[int, int] = {}
    for k, n in sizes.items():
        block_sizes[blocks[k]] = block_sizes.get(blocks[k], 0) + n
    s_max = float(exact_fraction(sparsity) + exact_fraction(s_max_offset))
    keep = water_filling_keep(block_sizes, {b: block_scores[b] for b in block_sizes}, sparsity, s_max)
    counts: dict[str, int] = {}
    for b, total in block_sizes.items():
        members = {k: n for k, n in sizes.items() if blocks[k] == b}
        pruned = total - keep[b]
        counts.update(_largest_remainders(members, {k: Fraction(n * pruned, total) for k, n in members.items()}, pruned))
    return {k: counts[k] for k in sizes}


def exact_ratio_counts(sizes: dict[str, int], ratios: dict[str, float], sparsity: float) -> dict[str, int]:
    """Pruned counts near n_k * r_k whose total is exactly floor(N * s) (largest remainders).

    For allocations such as OWL's whose ratios average to s only approximately (floats, and
    per-row int() in the official code): the achieved global sparsity is then the target.
    """
    budget = math.floor(sum(sizes.values()) * exact_fraction(sparsity))
    wanted = {k: min(max(ratios[k], 0.0), 1.0) * sizes[k] for k in sizes}
    return _largest_remainders(sizes, wanted, budget)
