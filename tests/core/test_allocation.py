"""DAS water-filling invariants (property tests) and a hand-checked case."""

from __future__ import annotations

import math

import pytest

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tampkit.core.allocation import exact_fraction, water_filling_keep


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
    from tampkit.core.allocation import owl_block_sparsities

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

    from tampkit.core.allocation import outlier_ratio

    # mean of [1]*18 + [20, 40] is 3 -> threshold 15 -> 2 of 20 scores are outliers = 10%
    scores = [torch.ones(3, 6), torch.tensor([[20.0, 40.0]])]
    assert outlier_ratio(scores, 5.0) == pytest.approx(10.0)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.tuples(st.integers(1, 4000), st.floats(0.01, 6)), min_size=1, max_size=10),
       sparsity=st.sampled_from([0.3, 0.5, 0.6, 0.7]), size_weighted=st.booleans())
def test_das_counts_keep_the_spec_budget(data: list[tuple[int, float]], sparsity: float, size_weighted: bool) -> None:
    from tampkit.core.allocation import das_prune_counts

    sizes = {f"m{i}": n for i, (n, _) in enumerate(data)}
    diversities = {f"m{i}": d for i, (_, d) in enumerate(data)}
    counts = das_prune_counts(sizes, diversities, sparsity, 0.1, size_weighted)
    total = sum(sizes.values())
    assert total - sum(counts.values()) == math.floor(total * (1 - exact_fraction(sparsity)))  # K_total = int(N(1-s))
    assert all(0 <= counts[k] <= sizes[k] for k in sizes)


def test_size_weighting_evens_out_matrix_types() -> None:
    from tampkit.core.allocation import das_prune_counts

    # Same diversity: unweighted pours the same number of kept weights into each matrix, so the small
    # one ends much denser; size-weighted pours in proportion to size, so both end at the target.
    sizes, diversity = {"small": 1000, "large": 9000}, {"small": 1.0, "large": 1.0}
    unweighted = das_prune_counts(sizes, diversity, 0.5, 0.1, size_weighted=False)
    weighted = das_prune_counts(sizes, diversity, 0.5, 0.1, size_weighted=True)
    assert unweighted["small"] / 1000 < 0.5 < unweighted["large"] / 9000
    assert weighted == {"small": 500, "large": 4500}


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.tuples(st.integers(1, 5000), st.floats(0, 1)), min_size=1, max_size=12),
       sparsity=st.sampled_from([0.1, 0.5, 0.6, 0.7, 0.9]))
@example(data=[(1, 0.0), (29, 0.0), (33, 0.21875)], sparsity=0.1)  # found by a fresh CI run
def test_exact_ratio_counts_hit_the_budget_for_any_ratios(data: list[tuple[int, float]], sparsity: float) -> None:
    from tampkit.core.allocation import exact_ratio_counts

    sizes = {f"m{i}": n for i, (n, _) in enumerate(data)}
    ratios = {f"m{i}": r for i, (_, r) in enumerate(data)}
    counts = exact_ratio_counts(sizes, ratios, sparsity)
    assert sum(counts.values()) == math.floor(sum(sizes.values()) * exact_fraction(sparsity))
    assert all(0 <= counts[k] <= sizes[k] for k in sizes)


def test_exact_ratio_counts_by_hand() -> None:
    from tampkit.core.allocation import exact_ratio_counts

    # wanted 0, 0, 7.21875 against a budget of floor(63 * 0.1) = 6: the unit comes off the only
    # matrix that has any (7 -> 6), one more than its own rounding
    assert exact_ratio_counts({"a": 1, "b": 29, "c": 33}, {"a": 0.0, "b": 0.0, "c": 0.21875}, 0.1) == {"a": 0, "b": 0, "c": 6}
    # wanted 25.5, 12.25, 12.25 (sum 50 = the budget): the largest remainder gets the one unit
    assert exact_ratio_counts({"a": 51, "b": 49, "c": 49}, {"a": 0.5, "b": 0.25, "c": 0.25}, 0.3356) == {"a": 26, "b": 12, "c": 12}


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
       offsets=st.lists(st.floats(-1, 1), min_size=12, max_size=12),
       sparsity=st.sampled_from([0.1, 0.5, 0.6, 0.7, 0.9]))
def test_exact_ratio_counts_stay_near_ratios_that_average_to_the_target(sizes: list[int], offsets: list[float],
                                                                      sparsity: float) -> None:
    """Ratios spread around s whose size-weighted mean is s (as OWL's are, up to float error): every
    generated case is one where only rounding moves the counts."""
    from tampkit.core.allocation import exact_ratio_counts

    names = [f"m{i}" for i in range(len(sizes))]
    n = dict(zip(names, sizes))
    total = sum(sizes)
    mean_offset = sum(o * size for o, size in zip(offsets, sizes)) / total
    spread = min(sparsity, 1 - sparsity) / 2  # |offset - mean| <= 2, so every ratio stays in [0, 1]
    ratios = {k: sparsity + spread * (o - mean_offset) for k, o in zip(names, offsets)}
    ratios = {k: min(max(r, 0.0), 1.0) for k, r in ratios.items()}
    assert abs(sum(ratios[k] * n[k] for k in names) - total * sparsity) < 1e-6  # the case is what it claims
    counts = exact_ratio_counts(n, ratios, sparsity)
    assert sum(counts.values()) == math.floor(total * exact_fraction(sparsity))
    # The ratios' sum R and the budget floor(N s) differ by less than 1, so on top of each count's
    # own rounding (< 1) at most one unit of the total's moves: a count is floor(n r) - 1 (at most
    # one of them), floor(n r) or floor(n r) + 1.
    below = 0
    for k in names:
        wanted = ratios[k] * n[k]
        assert math.floor(wanted) - 1 <= counts[k] <= math.floor(wanted) + 1, k
        assert abs(counts[k] - wanted) < 2, k
        below += counts[k] < math.floor(wanted)
    assert below <= 1


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.tuples(st.lists(st.integers(1, 3000), min_size=1, max_size=4), st.floats(0, 100)),
                       min_size=1, max_size=8),
       sparsity=st.sampled_from([0.3, 0.5, 0.6, 0.7, 0.8]))
def test_ecoflap_counts_are_the_block_water_filling_spread_over_each_block(blocks: list, sparsity: float) -> None:
    from fractions import Fraction

    from tampkit.core.allocation import ecoflap_prune_counts

    sizes, owner = {}, {}
    for b, (matrices, _) in enumerate(blocks):
        for j, n in enumerate(matrices):
            sizes[f"{b}.{j}"], owner[f"{b}.{j}"] = n, b
    scores = [score for _, score in blocks]
    counts = ecoflap_prune_counts(sizes, owner, scores, sparsity, 0.1)
    block_sizes = {b: sum(ms) for b, (ms, _) in enumerate(blocks)}
    s_max = float(exact_fraction(sparsity) + exact_fraction(0.1))  # 0.8, not 0.7 + 0.1 = 0.7999...
    keep = water_filling_keep(block_sizes, dict(enumerate(scores)), sparsity, s_max)
    for b, total in block_sizes.items():
        members = [k for k in sizes if owner[k] == b]
        pruned = total - keep[b]
        assert sum(counts[k] for k in members) == pruned  # the block's total is the water-filling's
        for k in members:  # each matrix within one weight of its share of the block's count
            assert abs(counts[k] - Fraction(sizes[k] * pruned, total)) < 1
            assert 0 <= counts[k] <= sizes[k]
    assert sum(counts.values()) == sum(sizes.values()) - math.floor(sum(sizes.values()) * (1 - exact_fraction(sparsity)))


def test_ecoflap_counts_by_hand() -> None:
    from tampkit.core.allocation import ecoflap_prune_counts

    # Two blocks of two 50-weight matrices at 50%, s_max 60%: each block keeps its floor of 40, and the
    # 20 left of the 100 kept are poured 3:1, so block 0 keeps 55 (prunes 45: 22.5 per matrix, the half
    # weight to the first name) and block 1 keeps 45 (prunes 55).
    sizes = {"0.q": 50, "0.k": 50, "1.q": 50, "1.k": 50}
    counts = ecoflap_prune_counts(sizes, {k: int(k[0]) for k in sizes}, [3.0, 1.0], 0.5, 0.1)
    assert counts == {"0.q": 22, "0.k": 23, "1.q": 27, "1.k": 28}
