"""How many weights each decoder matrix loses: uniform, DAS (TAMP), OWL or ECoFLaP, decided before pruning.

Allocation is separate from scoring: `das` and `tamp` share DAS, `owl` is Wanda with OWL's
per-block ratios. N:M structures fix every matrix at N/M, so allocations do not apply there
(the official code asserts 50% and ignores DAS too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from tampkit.core.allocation import (
    das_prune_counts,
    ecoflap_prune_counts,
    exact_ratio_counts,
    outlier_ratio,
    owl_block_sparsities,
    uniform_prune_counts,
)
from tampkit.engine.dense_stats import DenseStats
from tampkit.engine.masking import decoder_linears
from tampkit.engine.runner import residency
from tampkit.core.types import Structure
from tampkit.methods.wanda import wanda_scores
from tampkit.models.adapters import ModelBundle, find_linears


class AllocationSettings(Protocol):
    """The allocation constants (params.yaml's `allocation` section has exactly these)."""

    s_max_offset: float
    das_score: str
    owl_threshold: float
    owl_lambda: float
    zo_eps: float
    zo_seed: int


@dataclass
class Plan:
    counts: dict[str, int]
    allocation: str
    #: DAS: D_k and its similarity terms per matrix; OWL: outlier ratio and sparsity per block;
    #: ECoFLaP: zeroth-order score and sparsity per block.
    diversity: dict[str, float] = field(default_factory=dict)
    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    outlier_ratios: list[float] = field(default_factory=list)
    block_sparsities: list[float] = field(default_factory=list)
    block_scores: list[float] = field(default_factory=list)


def block_of(name: str, prefix: str) -> int:
    """Block index of a full Linear name under the decoder's prefix."""
    return int(name[len(prefix) + 1:].split(".", 1)[0])


def plan_counts(bundle: ModelBundle, allocation: str, sparsity: float, structure: Structure,
                params: AllocationSettings, stats: DenseStats | None = None,
                block_scores: list[float] | None = None) -> Plan:
    """The plan of `allocation`; DAS and OWL read `stats`, ECoFLaP `block_scores` (one per block)."""
    linears = decoder_linears(bundle)
    sizes = {name: linear.weight.numel() for name, linear in linears.items()}
    if allocation == "uniform" or structure.is_nm:
        return Plan(uniform_prune_counts(sizes, sparsity), "uniform" if not structure.is_nm else f"uniform ({structure})")
    if allocation == "ecoflap":
        if block_scores is None:
            raise ValueError("allocation ecoflap needs the block scores (the sensitivity stage)")
        prefix, _ = bundle.adapter.decoder_layers(bundle.model)
        blocks = {name: block_of(name, prefix) for name in sizes}
        counts = ecoflap_prune_counts(sizes, blocks, block_scores, sparsity, params.s_max_offset)
        block_sparsity = [0.0] * len(block_scores)
        for b in range(len(block_scores)):
            size = sum(n for name, n in sizes.items() if blocks[name] == b)
            block_sparsity[b] = sum(c for name, c in counts.items() if blocks[name] == b) / size if size else 0.0
        return Plan(counts, "ecoflap", block_sparsities=block_sparsity, block_scores=list(block_scores))
    if stats is None:
        raise ValueError(f"allocation {allocation} needs the dense statistics")
    if allocation == "das":
        diversities = stats.diversities()
        counts = das_prune_counts(sizes, diversities, sparsity, params.s_max_offset, params.das_score == "size")
        return Plan(counts, "das", diversity=diversities, terms=stats.terms)
    if allocation == "owl":
        prefix, layers = bundle.adapter.decoder_layers(bundle.model)
        ratios = []
        for index, block in enumerate(layers):  # one block's weights at a time (an offloaded model reads them in)
            with residency(bundle).block_on(index, block, torch.device("cpu")):
                scores = [wanda_scores(linear.weight, stats.scalers[f"{prefix}.{index}.{name}"])
                          for name, linear in find_linears(block).items()]
                ratios.append(outlier_ratio(scores, params.owl_threshold))
        block_sparsity = owl_block_sparsities(ratios, sparsity, params.owl_lambda)
        wanted = {name: block_sparsity[block_of(name, prefix)] for name in sizes}
        return Plan(exact_ratio_counts(sizes, wanted, sparsity), "owl", outlier_ratios=ratios,
                    block_sparsities=block_sparsity)
    raise ValueError(f"unknown allocation {allocation}")
