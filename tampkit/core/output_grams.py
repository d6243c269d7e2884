"""Cosine Gram matrices of a block's Linear outputs for one sample, stacked [L, N, N].

DAS needs them for the similarity terms, AMIA for rho, the kNN graph and the RBF kernel: one
matrix per Linear and sample serves all of it. When a Linear widens (d_out > d_in, no bias: gate
and up projections), Y Y^T = X (W^T W) X^T costs N^2 d_in instead of N^2 d_out; W^T W is computed
once per block. Other Linears normalise first and multiply second, exactly as `tampkit.core.diversity.cosine_gram`
(and the official code) do: the other order rounds differently, and with duplicated tokens
(block 0, repeated words) a last-bit difference can reorder exact ties and change AMIA's picks.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.diversity import cosine_gram


def widens(linear: nn.Linear) -> bool:
    """A Linear whose output Gram is cheaper through W^T W: no bias (y = W x) and d_out > d_in."""
    return linear.bias is None and linear.out_features > linear.in_features


def weight_gram(linear: nn.Linear) -> torch.Tensor:
    """W^T W in fp32 [d_in, d_in]."""
    weight = linear.weight.detach().float()
    return weight.T @ weight


class OutputGrams:
    def __init__(self) -> None:
        self._wtw: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget W^T W (weights change once a block is pruned)."""
        self._wtw.clear()

    def weight_gram(self, linear: nn.Linear) -> torch.Tensor:
        """W^T W of `linear`, computed once until `reset`."""
        key = id(linear)
        if key not in self._wtw:
            self._wtw[key] = weight_gram(linear)
        return self._wtw[key]

    def _widening_gram(self, linear: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> None:
        torch.matmul(x @ self.weight_gram(linear), x.T, out=out)
        norms = out.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
        out.div_(norms[:, None]).div_(norms[None, :])

    def stack(self, items: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[L, N, N] cosine Gram matrices for (linear, x [N, d_in], y [N, d_out]) of one sample."""
        n = items[0][2].shape[0]
        grams = torch.empty(len(items), n, n, dtype=torch.float32, device=items[0][2].device)
        for index, (linear, x, y) in enumerate(items):
            if widens(linear):
                self._widening_gram(linear, x, grams[index])
            else:
                cosine_gram(y, out=grams[index])
        return grams
