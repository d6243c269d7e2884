"""Uniform budgets for driving `prune_blocks` directly in tests (the pipeline plans them in
`engine.plan`)."""

from __future__ import annotations

from tampkit.core.allocation import uniform_prune_counts
from tampkit.engine.masking import decoder_linears
from tampkit.models.adapters import ModelBundle


def uniform_counts(bundle: ModelBundle, sparsity: float) -> dict[str, int]:
    """floor(sparsity * size) weights to prune in every decoder Linear."""
    sizes = {name: linear.weight.numel() for name, linear in decoder_linears(bundle).items()}
    return uniform_prune_counts(sizes, sparsity)
