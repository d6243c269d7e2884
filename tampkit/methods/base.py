"""What every pruning method provides to the block runner.

The runner feeds each Linear's input and output of each sample to `observe` (only when
`needs_calibration`), then asks `prune` for the block's masks. Methods hold per-block statistics
and forget them in `reset`, so memory stays one block deep.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.ranks import Ranks
from tampkit.core.types import SampleContext, Structure


class PruningMethod:
    name = "base"
    needs_calibration = True
    #: When True the runner records each sample's last-position attention row of the block
    #: being measured and hands it to `end_sample` after the sample's forward.
    needs_attention = False
    #: True when pruning also changes the surviving weights (SparseGPT), so a stored block must
    #: keep its new weights, not only its mask.
    updates_weights = False
    #: The calibration sample whose per-token choices a method keeps for the report's picture (None:
    #: none); the masks stage sets it, methods that choose no tokens ignore it.
    example_sample: int | None = None

    def reset(self) -> None:
        """Drop the statistics of the previous block."""

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        """x: [tokens, d_in] input rows, y: [tokens, d_out] output rows, both fp32."""

    def end_sample(self, ctx: SampleContext, attention: torch.Tensor) -> None:
        """Called after each sample's block forward when `needs_attention`; attention is [N] fp32."""

    def reduce(self, ranks: Ranks) -> None:
        """Under torchrun each rank has observed its own samples of the block: combine the
        statistics so every rank holds those of the whole set (in sample or rank order, never in
        the order messages arrive). One process: nothing to do. Methods without statistics keep
        this default."""

    def block_summary(self) -> dict:
        """What the report keeps about the block just measured (before `reset`)."""
        return {}

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        """Zero weights in place; return each Linear's mask (True = pruned)."""
        raise NotImplementedError


def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight[mask.to(linear.weight.device)] = 0
