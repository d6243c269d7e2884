"""DAS's similarity terms of one Linear's outputs without the N x N Gram matrix (issue 20, item 1).

The terms (see `tampkit.core.diversity`) read two kinds of entries of the cosine Gram matrix:
- an intra term reads only its modality's square block (pairs i < j of one modality);
- a cross term is the mean of every entry of an off-diagonal block, which is exact from sums:
  mean_{i in A, j in B} y_hat_i . y_hat_j = (sum_A y_hat) . (sum_B y_hat) / (|A| |B|).
So the dense statistics pass needs sum_m N_m^2 entries instead of N^2, and O(N d) for the cross
terms. For a widening Linear without bias (gate/up: d_out > d_in), y = W x, so the blocks are
X_m (W^T W) X_m^T and sum_A y_hat = W (sum_A x_i / |y_i|): nothing of size d_out per token.

The values equal `similarity_terms_batch` on the full Gram matrix to fp32 rounding (the sums run in
another order), not bit for bit; AMIA, whose choices hinge on exact ties, keeps the full Gram.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

from tampkit.core.diversity import term_name
from tampkit.core.output_grams import weight_gram, widens


def das_terms(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor,
              positive_only: bool = True, wtw: torch.Tensor | None = None) -> dict[str, float]:
    """Similarity per defined term of one sample's outputs y [N, d_out] (inputs x [N, d_in]).

    `wtw` is W^T W for a widening Linear without bias (computed here when not given)."""
    labels = labels.to(y.device)
    present = sorted(int(m) for m in torch.unique(labels))
    index = {m: (labels == m).nonzero().reshape(-1) for m in present}
    widening = widens(linear)
    if widening and wtw is None:
        wtw = weight_gram(linear)
    sums: dict[int, torch.Tensor] = {}
    terms: dict[str, float] = {}
    for m in present:
        idx = index[m]
        if widening:
            assert wtw is not None
            xm = x.index_select(0, idx).float()
            block = xm @ wtw @ xm.T
            norms = block.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
            block = block / norms[:, None] / norms[None, :]
            sums[m] = linear.weight.detach().float() @ (xm / norms[:, None]).sum(0)
        else:
            normalised = torch.nn.functional.normalize(y.index_select(0, idx).float(), dim=1)
            block = normalised @ normalised.T
            sums[m] = normalised.sum(0)
        if len(idx) < 2:
            continue
        upper = torch.triu(block, diagonal=1)
        if positive_only:
            upper = upper.clamp_min(0.0)
            count = int((upper > 0).sum())
            terms[term_name(m)] = float(upper.sum(dtype=torch.float64)) / count if count else 0.0
        else:
            terms[term_name(m)] = float(upper.sum(dtype=torch.float64)) / (len(idx) * (len(idx) - 1) // 2)
    for m, n in combinations(present, 2):
        terms[term_name(m, n)] = float(sums[m].double() @ sums[n].double()) / (len(index[m]) * len(index[n]))
    return terms
