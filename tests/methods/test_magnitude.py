"""Magnitude pruning against a direct computation on the tiny models: per matrix (layer-wise, not
per row), the `count` entries of lowest |W|, ties to the lower row-major index (as tampkit/masks.py
documents), with the counts of the uniform budget worked out here from the decimal sparsity."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from budgets import uniform_counts

from tampkit.engine.masking import decoder_linears, prune_blocks
from tampkit.core.types import Structure
from tampkit.methods.registry import make_method
from tampkit.models import load_model

CPU = torch.device("cpu")


def _expected_counts(sizes: dict[str, int], sparsity: str) -> dict[str, int]:
    """floor(n_k s) each, then one more for the largest remainders (ties by name) until the total is
    floor(N s): the global budget is exact and no matrix is off by more than one."""
    s = Fraction(sparsity)
    counts = {k: math.floor(n * s) for k, n in sizes.items()}
    extra = math.floor(sum(sizes.values()) * s) - sum(counts.values())
    for k in sorted(sizes, key=lambda k: (-(sizes[k] * s - counts[k]), k))[:extra]:
        counts[k] += 1
    return counts


def _lowest_magnitudes(weight: np.ndarray, count: int) -> np.ndarray:
    """The `count` entries of lowest |w|, ties to the lower row-major index."""
    flat = np.abs(weight).ravel()
    order = np.lexsort((np.arange(flat.size), flat))  # by |w|, then by index
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(weight.shape)


def _lowest_in_groups(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    mask = np.zeros(weight.shape, dtype=bool)
    for r in range(weight.shape[0]):
        for g in range(0, weight.shape[1], m):
            ranked = sorted(range(g, g + m), key=lambda j: (abs(float(weight[r, j])), j))
            mask[r, ranked[:n]] = True
    return mask


def _tied_model(alias: str):
    """The tiny model with its decoder weights rounded to a coarse grid: most |w| are tied with
    many others (both signs too), some are exactly 0, so the tie rule decides much of the mask."""
    bundle = load_model(alias)
    with torch.no_grad():
        for linear in decoder_linears(bundle).values():
            step = float(linear.weight.abs().mean()) / 2
            linear.weight.copy_(torch.round(linear.weight / step) * step)
    return bundle


@pytest.mark.parametrize("sparsity", ["0.37", "0.5", "0.9"])
def test_magnitude_masks_equal_the_lowest_magnitudes_of_each_matrix(tiny_alias: str, sparsity: str) -> None:
    bundle = _tied_model(tiny_alias)
    linears = decoder_linears(bundle)
    dense = {name: linear.weight.detach().numpy().copy() for name, linear in linears.items()}
    counts = uniform_counts(bundle, float(sparsity))
    assert counts == _expected_counts({name: w.size for name, w in dense.items()}, sparsity)
    result = prune_blocks(bundle, [], make_method("magnitude"), counts, Structure(), CPU, progress=False)
    assert result.masks.keys() == dense.keys()
    ties = 0
    for name, weight in dense.items():
        expected = _lowest_magnitudes(weight, counts[name])
        assert np.array_equal(result.masks[name].numpy(), expected), name
        after = linears[name].weight.detach().numpy()
        assert np.array_equal(after == 0, expected | (weight == 0)), name  # pruned entries, and the zeros there were
        assert np.array_equal(after[~expected], weight[~expected]), name  # the rest untouched
        # the tie rule is exercised: the largest pruned |w| is also kept elsewhere
        if 0 < counts[name] < weight.size:
            ties += bool(np.abs(weight[expected]).max() == np.abs(weight[~expected]).min())
    assert ties >= len(dense) // 2


def test_magnitude_two_of_four_keeps_the_two_largest_of_each_group(tiny_alias: str) -> None:
    bundle = _tied_model(tiny_alias)
    linears = decoder_linears(bundle)
    dense = {name: linear.weight.detach().numpy().copy() for name, linear in linears.items()}
    result = prune_blocks(bundle, [], make_method("magnitude"), uniform_counts(bundle, 0.5), Structure(2, 4), CPU,
                          progress=False)
    for name, weight in dense.items():
        expected = _lowest_in_groups(weight, 2, 4)
        assert np.array_equal(result.masks[name].numpy(), expected), name
        assert np.array_equal(linears[name].weight.detach().numpy() == 0, expected | (weight == 0)), name
