"""AMIA token selection (TAMP, Phase B step 2): which output tokens of one Linear, for one sample,
enter Wanda's input statistic. Pure functions of the output Gram matrix and the attention row.

One cosine Gram matrix G of the Linear's L2-normalised outputs serves all three uses the spec
names: the similarity terms (rho), the kNN distances d = 1 - G, and the RBF kernel
K = exp(-||y_i - y_j||^2 / (2 sigma^2)) = exp((G - 1) / sigma^2). The greedy loop keeps the MMD
terms as running sums (mean(K) is fixed; sum K[:, S] and sum K[S, S] grow by one column per
pick), so a pick costs O(|S|) instead of the official O(N^2) recomputation. Ties are broken by the
lowest token index everywhere (kNN, argmax), so the picks are a pure function of the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tampkit.diversity import similarity_terms


@dataclass(frozen=True)
class AmiaParams:
    """The spec's constants; every one is a parameter."""

    knn: int = 3
    suppression: float = 0.2  # suppression weight exp(-suppression * d)
    stop: float = 0.1  # stop when MMD^2 < stop * sqrt(1 - rho)
    sigma: float = 1.0  # RBF kernel width
    positive_only: bool = True  # intra similarity terms of rho count positive pairs only (official)


def knn_indices(gram: torch.Tensor, k: int) -> torch.Tensor:
    """[N, min(k, N-1)]: each token's nearest tokens by d = 1 - cos, self excluded.

    Neighbours are ordered by distance, then by index; ties at the k-th place go to the lowest
    index (torch.topk alone leaves that order unspecified, and duplicate tokens are common:
    repeated text tokens and LLaVA-NeXT's row-newline tokens give identical q/k/v rows).
    """
    n = gram.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(n, 0, dtype=torch.long)
    masked = gram.clone()
    masked.fill_diagonal_(float("-inf"))
    values, index = masked.topk(k, dim=1)
    kth = values[:, -1:]
    ambiguous = (masked >= kth).sum(1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().reshape(-1)
        order = torch.sort(-masked[rows], dim=1, stable=True).indices[:, :k]
        index[rows] = order
    # Canonical order within the neighbour set: by similarity descending, then index ascending.
    index = index.sort(dim=1).values
    sims = masked.gather(1, index)
    order = torch.sort(-sims, dim=1, stable=True).indices
    return index.gather(1, order)


def rho_of(gram: torch.Tensor, labels: torch.Tensor, positive_only: bool = True) -> float:
    """Mean of the sample's defined similarity terms (0 if none is defined)."""
    terms = similarity_terms(gram, labels, positive_only)
    return sum(terms.values()) / len(terms) if terms else 0.0


def amia_select(gram: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                params: AmiaParams = AmiaParams(), rho: float | None = None) -> torch.Tensor:
    """Indices of the selected tokens, in pick order (see the module docstring for the rule)."""
    n = gram.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    if rho is None:
        rho = rho_of(gram, labels, params.positive_only)
    threshold = params.stop * math.sqrt(max(1.0 - rho, 0.0))
    g32 = gram.float().cpu()
    neighbours = knn_indices(g32, params.knn).numpy()
    cos64 = g32.double()
    cos = cos64.numpy()
    a = attention.detach().double().cpu().numpy()
    # g_i = a_i + sum_j exp(-d_ij) a_j, summed neighbour by neighbour (nearest first).
    g = a.copy()
    rows = np.arange(n)
    for c in range(neighbours.shape[1]):
        j = neighbours[:, c]
        g += np.exp(-(1.0 - cos[rows, j])) * a[j]
    inv_var = 1.0 / (params.sigma * params.sigma)
    kernel_cols = (cos64 - 1.0).mul_(inv_var).exp_().sum(0).numpy()
    mean_k = kernel_cols.sum() / (n * n)
    race = g.copy()
    selected: list[int] = []
    sum_cross = 0.0  # sum of K[:, S]
    sum_inner = 0.0  # sum of K[S, S]
    while True:
        t = int(np.argmax(race))
        gain = max(g[t], 0.0)
        for j in neighbours[t]:
            g[j] -= math.exp(-params.suppression * (1.0 - cos[t, j])) * gain
            if race[j] != -np.inf:
                race[j] = g[j]
        race[t] = -np.inf
        if selected:
            sum_inner += 2.0 * float(np.exp((cos[t, selected] - 1.0) * inv_var).sum())
        sum_inner += math.exp((cos[t, t] - 1.0) * inv_var)
        sum_cross += float(kernel_cols[t])
        selected.append(t)
        m = len(selected)
        mmd2 = mean_k + sum_inner / (m * m) - 2.0 * sum_cross / (n * m)
        if mmd2 < threshold or m == n:
            break
    return torch.tensor(selected, dtype=torch.long)
