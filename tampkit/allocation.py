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
