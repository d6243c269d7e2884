"""Magnitude pruning: |W|, the lowest entries of each matrix (layer-wise, as in locuslab/wanda)."""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.masks import mask_nm, mask_per_matrix

from tampkit.core.types import Structure
from tampkit.methods.base import PruningMethod, apply_mask


class Magnitude(PruningMethod):
    name = "magnitude"
    needs_calibration = False

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        masks = {}
        for name, linear in linears.items():
            scores = linear.weight.detach().abs().float()
            mask = mask_nm(scores, structure.n, structure.m) if structure.is_nm else mask_per_matrix(scores, counts[name])
            apply_mask(linear, mask)
            masks[name] = mask.cpu()
        return masks
