"""AMIA as the official code structures it, for the benchmark: vectorised tensor ops, but three
separate N x N products (similarity terms, kNN distances, RBF kernel) and the MMD recomputed from
the kernel matrix at every pick. Same rule and tie-breaking as `tampkit.core.amia.amia_select_batch`, so the
benchmark can also count how often the two pick the same tokens."""

from __future__ import annotations

import math

import torch

from tampkit.core.amia import AmiaParams, knn_indices
from tampkit.core.diversity import cosine_gram, similarity_terms


def naive_amia_select(gram: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                      params: AmiaParams = AmiaParams(), y: torch.Tensor | None = None) -> torch.Tensor:
    if y is None:
        raise ValueError("the naive version recomputes every product from the outputs y")
    n = y.shape[0]
    terms = similarity_terms(cosine_gram(y), labels, params.positive_only)  # product 1
    rho = sum(terms.values()) / len(terms) if terms else 0.0
    unit = torch.nn.functional.normalize(y.float(), dim=1)
    cos = unit @ unit.T  # product 2: kNN distances
    d = (1.0 - cos).double()
    near = knn_indices(cos, params.knn)
    a = attention.double()
    g = a.clone()
    for c in range(near.shape[1]):
        g += torch.exp(-d[torch.arange(n), near[:, c]]) * a[near[:, c]]
    sq = torch.cdist(unit, unit).double() ** 2  # product 3: RBF kernel
    kernel = torch.exp(-sq / (2 * params.sigma**2))
    threshold = params.stop * math.sqrt(max(1.0 - rho, 0.0))
    alive = torch.ones(n, dtype=torch.bool)
    selected: list[int] = []
    while True:
        t = int(torch.where(alive, g, torch.tensor(float("-inf"), dtype=g.dtype)).argmax())
        gain = max(float(g[t]), 0.0)
        g[near[t]] -= torch.exp(-params.suppression * d[t, near[t]]) * gain
        alive[t] = False
        selected.append(t)
        s = torch.tensor(selected)
        mmd2 = kernel.mean() + kernel[s][:, s].mean() - 2 * kernel[:, s].mean()
        if float(mmd2) < threshold or len(selected) == n:
            return s
