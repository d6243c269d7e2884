"""What every pruning method provides to the block runner.

The runner feeds each Linear's input and output of each sample to `observe` (only when
`needs_calibration`), then asks `prune` for the block's masks. Methods hold per-block statistics
and forget them in `reset`, so memory stays one block deep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tampkit.masks import Structure


@dataclass
class SampleContext:
    """What a hook knows about the sample being run: its index and per-token modality labels."""

    index: int
    labels: torch.Tensor


class PruningMethod:
    name = "base"
    needs_calibration = True

    def reset(self) -> None:
        """Drop the statistics of the previous block."""

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        """x: [tokens, d_in] input rows, y: [tokens, d_out] output rows, both fp32."""

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        """Zero weights in place; return each Linear's mask (True = pruned)."""
        raise NotImplementedError


def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight[mask.to(linear.weight.device)] = 0
