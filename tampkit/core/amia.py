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

import numpy as np
import torch

from tampkit.core.amia_params import AMIA_SCOPES, AmiaParams
from tampkit.core.diversity import similarity_terms_batch
from tampkit.core.types import TEXT


def knn_indices(gram: torch.Tensor, k: int) -> torch.Tensor:
    """[N, min(k, N-1)] (or [L, N, k] for stacked Gram matrices): each token's nearest tokens by
    d = 1 - cos, self excluded.

    Neighbours are ordered by distance, then by index; ties at the k-th place go to the lowest
    index (torch.topk alone leaves that order unspecified, and duplicate tokens are common:
    repeated text tokens and LLaVA-NeXT's row-newline tokens give identical q/k/v rows). The
    diagonal is masked in place and restored, so no N x N copy is made.
    """
    if gram.dim() == 2:
        return knn_indices(gram[None], k)[0]
    batch, n = gram.shape[0], gram.shape[1]
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(batch, n, 0, dtype=torch.long, device=gram.device)
    diagonal = gram.diagonal(dim1=1, dim2=2)
    saved = diagonal.clone()
    diagonal.fill_(float("-inf"))
    try:
        values, index = gram.topk(min(k + 1, n), dim=2)
        # A tie at the k-th place shows as the (k+1)-th value equal to the k-th.
        ambiguous = values[:, :, k] == values[:, :, k - 1] if k < n - 1 else torch.zeros(batch, n, dtype=torch.bool, device=gram.device)
        index = index[:, :, :k].contiguous()
        if bool(ambiguous.any()):
            where = ambiguous.nonzero()
            rows = gram[where[:, 0], where[:, 1]]
            index[where[:, 0], where[:, 1]] = torch.sort(-rows, dim=1, stable=True).indices[:, :k]
        # Canonical order within the neighbour set: by similarity descending, then index ascending.
        index = index.sort(dim=2).values
        order = torch.sort(-gram.gather(2, index), dim=2, stable=True).indices
        return index.gather(2, order)
    finally:
        diagonal.copy_(saved)


def _rho(terms: dict[str, float]) -> float:
    return sum(terms.values()) / len(terms) if terms else 0.0


def amia_select_batch(grams: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                      params: AmiaParams = AmiaParams()) -> list[torch.Tensor]:
    """AMIA's picks for the stacked Gram matrices [L, N, N] of one sample's Linears.

    With `params.scope == "nontext"` every text token is kept and the selection runs on the
    sub-problem of the other tokens (their Gram block, attention and labels); a sample without
    such tokens keeps all its tokens. Text tokens come first, then the picks in pick order.
    """
    if params.scope == "all":
        return _select_all(grams, attention, labels, params)
    if params.scope != "nontext":
        raise ValueError(f"unknown AMIA scope {params.scope!r} (allowed: {', '.join(AMIA_SCOPES)})")
    text = (labels == TEXT).nonzero().flatten()
    others = (labels != TEXT).nonzero().flatten()
    if len(others) == 0:
        return [torch.arange(len(labels)) for _ in range(grams.shape[0])]
    index = others.to(grams.device)
    sub = grams.index_select(1, index).index_select(2, index)
    picks = _select_all(sub, attention[others], labels[others], params)
    return [torch.cat([text.cpu(), others.cpu()[p]]) for p in picks]


def _select_all(grams: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                params: AmiaParams) -> list[torch.Tensor]:
    """The spec's selection among all tokens.

    The O(N^2) preparation (similarity terms, kNN, kernel column sums) runs batched over the L
    Linears; the greedy loops, O(|S|) each, run one by one.
    """
    n = grams.shape[1]
    if n == 0:
        return [torch.empty(0, dtype=torch.long) for _ in range(grams.shape[0])]
    # The O(N^2) passes run where the Gram matrices are (GPU when pruning there); only the greedy
    # loop, which reads a few rows, needs them on the CPU.
    grams = grams.float()
    rhos = [_rho(t) for t in similarity_terms_batch(grams, labels, params.positive_only)]
    neighbours = knn_indices(grams, params.knn).cpu().numpy()
    inv_var = 1.0 / (params.sigma * params.sigma)
    # mean(K) over all N^2 pairs: fp32 exp, fp64 sum (MMD^2 cancels to ~0 near the stop, so its
    # terms need fp64 sums). Columns of picked tokens are summed in fp64 in the loop.
    kernel_sums = [float((g - 1.0).mul_(inv_var).exp_().sum(dtype=torch.float64)) for g in grams]  # one N x N temporary
    a = attention.detach().double().cpu().numpy()
    cos = grams.cpu().numpy()
    return [_greedy(cos[b], a, neighbours[b], kernel_sums[b], rhos[b], params, inv_var) for b in range(grams.shape[0])]


def _greedy(cos: np.ndarray, a: np.ndarray, neighbours: np.ndarray, kernel_sum: float, rho: float,
            params: AmiaParams, inv_var: float) -> torch.Tensor:
    n = cos.shape[0]
    threshold = params.stop * math.sqrt(max(1.0 - rho, 0.0))
    # g_i = a_i + sum_j exp(-d_ij) a_j, summed neighbour by neighbour (nearest first).
    g = a.copy()
    rows = np.arange(n)
    for c in range(neighbours.shape[1]):
        j = neighbours[:, c]
        g += np.exp(-(1.0 - cos[rows, j].astype(np.float64))) * a[j]
    mean_k = kernel_sum / (n * n)
    race = g.copy()
    selected = np.empty(n, dtype=np.int64)
    m = 0
    sum_cross = 0.0  # sum of K[:, S]  (column t summed in fp64 when t is picked)
    sum_inner = 0.0  # sum of K[S, S]
    neighbour_rows = neighbours.tolist()
    while True:
        t = int(np.argmax(race))
        gain = max(g[t], 0.0)
        for j in neighbour_rows[t]:
            g[j] -= math.exp(-params.suppression * (1.0 - float(cos[t, j]))) * gain
            if race[j] != -np.inf:
                race[j] = g[j]
        race[t] = -np.inf
        row = cos[t].astype(np.float64)
        if m:
            sum_inner += 2.0 * float(np.exp((row[selected[:m]] - 1.0) * inv_var).sum())
        sum_inner += math.exp((row[t] - 1.0) * inv_var)
        sum_cross += float(np.exp((cos[:, t].astype(np.float64) - 1.0) * inv_var).sum())
        selected[m] = t
        m += 1
        mmd2 = mean_k + sum_inner / (m * m) - 2.0 * sum_cross / (n * m)
        if mmd2 < threshold or m == n:
            break
    return torch.from_numpy(selected[:m].copy())
