"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared within each output row.

The input statistic is locuslab/wanda's `scaler_row`: the mean over samples of each sample's sum
of x_j^2 over its tokens. AMIA-Wanda feeds `add_rows` only the tokens it selects.

Each sample's sum is kept (a vector per Linear and sample, one block at a time) and folded in
sample order when the masks are chosen: under torchrun the ranks' vectors are gathered first, so
the statistic is the one-process one bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.masks import mask_nm, mask_per_row, row_counts

from tampkit.core.ranks import Ranks, sum_in_order
from tampkit.core.types import SampleContext, Structure
from tampkit.methods.base import PruningMethod, apply_mask


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| * sqrt(mean_samples sum_tokens x^2) broadcast over output rows."""
    scores = weight.detach().float()  # one fp32 copy, scaled in place (no abs/cast/product temporaries)
    if scores.data_ptr() == weight.data_ptr():
        scores = scores.clone()
    return scores.abs_().mul_(torch.sqrt(sq_norm.float())[None, :])


def wanda_masks(scores: torch.Tensor, count: int, structure: Structure) -> torch.Tensor:
    if structure.is_nm:
        return mask_nm(scores, structure.n, structure.m)
    return mask_per_row(scores, row_counts(count, scores.shape[0]))


class Wanda(PruningMethod):
    name = "wanda"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.per_sample: dict[str, list[torch.Tensor]] = {}

    def add_rows(self, name: str, rows: torch.Tensor) -> None:
        """Add one sample's token rows (all of them for Wanda, AMIA's picks for AMIA-Wanda)."""
        self.per_sample.setdefault(name, []).append((rows * rows).sum(0))

    def reduce(self, ranks: Ranks) -> None:
        super().reduce(ranks)
        for name in sorted(self.per_sample):
            self.per_sample[name] = list(ranks.concat(torch.stack(self.per_sample[name])).unbind(0))

    def sq_sum(self, name: str) -> torch.Tensor:
        """sum over samples of sum over tokens x^2, added in sample order."""
        return sum_in_order(self.per_sample[name])

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        self.add_rows(name, x)

    def input_norms(self, name: str) -> torch.Tensor:
        return self.sq_sum(name) / len(self.per_sample[name])

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        masks = {}
        for name, linear in linears.items():
            scores = wanda_scores(linear.weight, self.input_norms(name).to(linear.weight.device))
            mask = wanda_masks(scores, counts[name], structure)
            apply_mask(linear, mask)
            masks[name] = mask.cpu()
        return masks
