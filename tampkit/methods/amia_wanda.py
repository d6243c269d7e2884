"""AMIA-Wanda (TAMP, Phase B): Wanda whose input statistic uses only the tokens AMIA selects.

The statistic is the mean over all selected tokens of all samples of x_j^2 (the spec's); the
selection itself is `AmiaSelection`'s.
"""

from __future__ import annotations

import torch

from tampkit.methods.amia_selection import AmiaSelection
from tampkit.methods.wanda import Wanda


class AmiaWanda(AmiaSelection, Wanda):
    name = "amia"

    def input_norms(self, name: str) -> torch.Tensor:
        return self.sq_sum(name) / max(self.selected_tokens[name], 1)
