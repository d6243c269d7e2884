"""DAS water-filling invariants (property tests) and a hand-checked case."""

from __future__ import annotations

import math

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from tampkit.allocation import exact_fraction, water_filling_keep


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.tuples(st.integers(1, 5000), st.floats(0, 10)), min_size=1, max_size=12),
       sparsity=st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9]))
def test_water_filling_budget_and_bounds(data: list[tuple[int, float]], sparsity: float) -> None:
    sizes = {f"m{i}": n for i, (n, _) in enumerate(data)}
    scores = {f"m{i}": d for i, (_, d) in enumerate(data)}
    keep = water_filling_keep(sizes, scores, sparsity, sparsity + 0.1)
    budget = math.floor(sum(sizes.values()) * (1 - exact_fraction(sparsity)))
    assert sum(keep.values()) == budget  # the global budget is always exact
    floors = {k: math.ceil(n * (1 - exact_fraction(min(sparsity + 0.1, 1.0)))) for k, n in sizes.items()}
    for k, n in sizes.items():
        assert 0 <= keep[k] <= n
        if sum(floors.values()) <= budget:  # s_max holds unless rounding makes it impossible
            assert keep[k] >= floors[k]


def test_water_filling_by_hand() -> None:
    # N = 300, s = 0.5 -> keep 150; s_max = 0.6 -> each keeps at least 40 (120 in all).
    # The 30 left are poured 2:1 -> +20 and +10.
    keep = water_filling_keep({"a": 100, "b": 100, "c": 100}, {"a": 2.0, "b": 1.0, "c": 0.0}, 0.5, 0.6)
    assert keep == {"a": 60, "b": 50, "c": 40}


def test_higher_diversity_keeps_more_among_equal_sizes() -> None:
    sizes = {f"m{i}": 1000 for i in range(5)}
    scores = {f"m{i}": float(i + 1) for i in range(5)}
    keep = water_filling_keep(sizes, scores, 0.5, 0.6)
    ordered = [keep[f"m{i}"] for i in range(5)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]


def test_full_matrices_leave_the_race() -> None:
    keep = water_filling_keep({"big": 1000, "small": 10}, {"big": 1.0, "small": 1000.0}, 0.5, 0.6)
    assert keep["small"] == 10 and sum(keep.values()) == 505


def test_budget_stays_exact_when_floors_alone_exceed_it() -> None:
    keep = water_filling_keep({"a": 1, "b": 1, "c": 1}, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.5, 0.6)
    assert sum(keep.values()) == 1


@settings(max_examples=100, deadline=None)
@given(ratios=st.lists(st.floats(0, 30), min_size=2, max_size=40), sparsity=st.sampled_from([0.5, 0.6, 0.7]))
def test_owl_averages_to_target_and_spans_two_lambda(ratios: list[float], sparsity: float) -> None:
    from tampkit.allocation import owl_block_sparsities

    out = owl_block_sparsities(ratios, sparsity, lam=0.08)
    assert sum(out) / len(out) == pytest.approx(sparsity, abs=1e-9)
    if max(ratios) > min(ratios):
        assert max(out) - min(out) == pytest.approx(0.16, abs=1e-9)
        most, least = ratios.index(max(ratios)), ratios.index(min(ratios))
        assert out[most] < out[least]  # more outliers -> denser block
    else:
        assert max(out) - min(out) == pytest.approx(0.0, abs=1e-9)


def test_outlier_ratio_by_hand() -> None:
    import torch

    from tampkit.allocation import outlier_ratio

    # mean of [1]*18 + [20, 40] is 3 -> threshold 15 -> 2 of 20 scores are outliers = 10%
    scores = [torch.ones(3, 6), torch.tensor([[20.0, 40.0]])]
    assert outlier_ratio(scores, 5.0) == pytest.approx(10.0)
