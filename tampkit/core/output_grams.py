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


class OutputGrams:
    def __init__(self) -> None:
        self._wtw: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget W^T W (weights change once a block is pruned)."""
        self._wtw.clear()

    def _widening_gram(self, linear: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> None:
        key = id(linear)
        if key not in self._wtw:
            weight = linear.weight.detach().float()
            self._wtw[key] = weight.T @ weight
        torch.matmul(x @ self._wtw[key], x.T, out=out)
        norms = out.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
        out.div_(norms[:, None]).div_(norms[None, :])

    def stack(self, items: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[L, N, N] cosine Gram matrices for (linear, x [N, d_in], y [N, d_out]) of one sample."""
        n = items[0][2].shape[0]
        grams = torch.empty(len(items), n, n, dtype=torch.float32, device=items[0][2].device)
        for index, (linear, x, y) in enumerate(items):
            if linear.bias is None and linear.out_features > linear.in_features:
                self._widening_gram(linear, x, grams[index])
            else:
                cosine_gram(y, out=grams[index])
        return grams
