"""Cosine Gram matrices of a block's Linear outputs for one sample, stacked [L, N, N].

DAS needs them for the similarity terms, AMIA for rho, the kNN graph and the RBF kernel: one
matrix per Linear and sample serves all of it. When a Linear widens (d_out > d_in, no bias: gate
and up projections), Y Y^T = X (W^T W) X^T costs N^2 d_in instead of N^2 d_out; W^T W is computed
once per block. Other Linears normalise first and multiply second, exactly as `tampkit.core.diversity.cosine_gram`
(and the official code) do: the other order rounds differently, and with duplicated tokens
(block 0, repeated words) a last-bit difference can reorder exact ties and change AMIA's picks.

The Gram matrix is symmetric, so on the CPU `symmetric_product` computes only the tiles on and
above the diagonal (row panels of 128 tokens against the tokens from the panel on) and mirrors
them: ~(T + 1) / 2T of the multiply-adds for T panels, 1.4-1.6x faster than one `a @ b.T` at
N = 512-1500 on 2 cores (bench/bench_amia.py). Each entry is still one dot product of the same
two rows, and on this BLAS (MKL, AVX-512) the panels round as the whole product does, so for
normalised outputs the result equals `cosine_gram` bit for bit (checked for every N from 257 to
1699 at d = 64, 576, 1536; a plain `y @ y.T` of those sizes is symmetric bit for bit too) once a
thin last panel joins the one before it: products of 1-11 rows take another kernel and round
differently. A BLAS without that property would move last bits, and with exact ties AMIA's
picks; tests/core/test_amia_grams.py checks the entries and the picks on real block outputs. Through W^T W the plain
product is not symmetric in the last bits (row i of X W^T W against x_j is another rounding than
row j against x_i): the mirrored matrix keeps the upper triangle's values on both sides.
"""

from __future__ import annotations

import torch
from torch import nn



#: Tokens per row panel of `symmetric_product` (128: best of 64-512 measured, see the module doc).
PANEL = 128
#: A last panel thinner than this joins the one before it.
MIN_PANEL = 32


def symmetric_product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """a @ b.T into `out` [N, N] for a product known to be symmetric (b = a, or a = x M with M
    symmetric and b = x): the tiles on and above the diagonal, mirrored below. On a GPU, or for
    N <= 2 panels, one plain product (tiling only pays where the BLAS is the bottleneck)."""
    n = a.shape[0]
    if a.device.type != "cpu" or n <= 2 * PANEL:
        return torch.matmul(a, b.T, out=out)
    starts = list(range(0, n, PANEL))
    if n - starts[-1] < MIN_PANEL:  # no thin last panel: a few-row product takes another BLAS
        starts.pop()                # kernel that rounds differently (seen here for 1-11 rows)
    for start, stop in zip(starts, starts[1:] + [n]):
        out[start:stop, start:].copy_(a[start:stop] @ b[start:].T)
        if stop < n:
            out[stop:, start:stop].copy_(out[start:stop, stop:].T)
    return out


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
        symmetric_product(x @ self.weight_gram(linear), x, out)
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
                unit = torch.nn.functional.normalize(y.float(), dim=1)  # as cosine_gram
                symmetric_product(unit, unit, grams[index])
        return grams
