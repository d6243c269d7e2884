"""Mask functions against direct slow computations, and their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tampkit.core.allocation import exact_fraction, uniform_prune_counts
from tampkit.core.errors import UsageError
from tampkit.core.masks import mask_nm, mask_per_matrix, mask_per_row, pack_mask, row_counts, unpack_mask
from tampkit.core.types import parse_structure


@given(total=st.integers(0, 10_000), rows=st.integers(1, 300))
def test_row_counts_spread_total_exactly(total: int, rows: int) -> None:
    counts = row_counts(total, rows)
    assert int(counts.sum()) == total
    assert int(counts.max() - counts.min()) <= 1
    assert bool((counts[:-1] >= counts[1:]).all())  # the extra ones go to the first rows


def _naive_row_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: (float(scores[r, j]), j))
        for j in order[: int(counts[r])]:
            mask[r, j] = True
    return mask


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 19), seed=st.integers(0, 10_000), ties=st.booleans(),
       frac=st.floats(0, 1))
def test_mask_per_row_matches_naive(rows: int, cols: int, seed: int, ties: bool, frac: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (rows, cols), generator=gen).float() if ties else torch.rand(rows, cols, generator=gen)
    counts = row_counts(int(frac * rows * cols), rows).clamp(max=cols)
    assert torch.equal(mask_per_row(scores, counts), _naive_row_mask(scores, counts))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), seed=st.integers(0, 1000), nm=st.sampled_from([(2, 4), (4, 8)]))
def test_mask_nm_prunes_lowest_n_of_each_group(rows: int, groups: int, seed: int, nm: tuple[int, int]) -> None:
    n, m = nm
    scores = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    mask = mask_nm(scores, n, m)
    grouped_mask = mask.reshape(rows, groups, m)
    assert bool((grouped_mask.sum(-1) == n).all())
    grouped = scores.reshape(rows, groups, m)
    kept_min = grouped.masked_fill(grouped_mask, float("inf")).min(-1).values
    pruned_max = grouped.masked_fill(~grouped_mask, float("-inf")).max(-1).values
    assert bool((pruned_max <= kept_min).all())


@given(numel=st.integers(1, 200), count=st.integers(0, 200), seed=st.integers(0, 100))
def test_mask_per_matrix_prunes_exactly_the_lowest(numel: int, count: int, seed: int) -> None:
    count = min(count, numel)
    scores = torch.rand(1, numel, generator=torch.Generator().manual_seed(seed))
    mask = mask_per_matrix(scores, count)
    assert int(mask.sum()) == count
    if 0 < count < numel:
        assert float(scores[mask].max()) <= float(scores[~mask].min())


@given(shape=st.tuples(st.integers(1, 17), st.integers(1, 33)), seed=st.integers(0, 1000))
def test_pack_roundtrip(shape: tuple[int, int], seed: int) -> None:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8 and packed.size == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, shape), mask)


@given(sizes=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(1, 10**7), min_size=1, max_size=8),
       sparsity=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]))
def test_uniform_counts_hit_the_global_budget_within_one_weight_per_matrix(sizes: dict[str, int], sparsity: float) -> None:
    counts = uniform_prune_counts(sizes, sparsity)
    exact = exact_fraction(sparsity)
    assert sum(counts.values()) == math.floor(sum(sizes.values()) * exact)
    for name, n in sizes.items():
        assert math.floor(n * exact) <= counts[name] <= math.ceil(n * exact)


def test_uniform_counts_use_the_decimal_not_the_float() -> None:
    # 0.7 * 10 == 7.000000000000001 in floats; floor must still give 7, and 0.29 * 100 must give 29.
    assert uniform_prune_counts({"a": 10, "b": 100}, 0.7) == {"a": 7, "b": 70}
    assert uniform_prune_counts({"a": 100}, 0.29) == {"a": 29}


def test_structure_parsing() -> None:
    assert str(parse_structure("2:4", 0.5)) == "2:4"
    assert not parse_structure("unstructured", 0.7).is_nm
    with pytest.raises(UsageError, match="--sparsity"):
        parse_structure("2:4", 0.6)
    with pytest.raises(UsageError, match="--structure.*allowed"):
        parse_structure("3:4", 0.75)
