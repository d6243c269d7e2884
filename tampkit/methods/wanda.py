"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared within each output row.

The input statistic is locuslab/wanda's `scaler_row`: the mean over samples of each sample's sum
of x_j^2 over its tokens. AMIA-Wanda feeds `add_rows` only the tokens it selects.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.masks import mask_nm, mask_per_row, row_counts

from tampkit.core.types import Structure
from tampkit.core.types import SampleContext
from tampkit.methods.base import PruningMethod, apply_mask


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| * sqrt(mean_samples sum_tokens x^2) broadcast over output rows."""
    return weight.detach().abs().float() * torch.sqrt(sq_norm.float())[None, :]


def wanda_masks(scores: torch.Tensor, count: int, structure: Structure) -> torch.Tensor:
    if structure.is_nm:
        return mask_nm(scores, structure.n, structure.m)
    return mask_per_row(scores, row_counts(count, scores.shape[0]))


class Wanda(PruningMethod):
    name = "wanda"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sq_sum: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}

    def add_rows(self, name: str, rows: torch.Tensor) -> None:
        """Add one sample's token rows (all of them for Wanda, AMIA's picks for AMIA-Wanda)."""
        contribution = (rows * rows).sum(0)
        if name in self.sq_sum:
            self.sq_sum[name] += contribution
        else:
            self.sq_sum[name] = contribution
        self.samples[name] = self.samples.get(name, 0) + 1

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        self.add_rows(name, x)

    def input_norms(self, name: str) -> torch.Tensor:
        return self.sq_sum[name] / self.samples[name]

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        masks = {}
        for name, linear in linears.items():
            scores = wanda_scores(linear.weight, self.input_norms(name).to(linear.weight.device))
            mask = wanda_masks(scores, counts[name], structure)
            apply_mask(linear, mask)
            masks[name] = mask.cpu()
        return masks
