"""AMIA written straight from ../shared/tamp-spec.md, one loop per sentence: the oracle that the
fast `tampkit.core.amia.amia_select_batch` must match pick for pick. Slow on purpose (O(N^2) per pick)."""

from __future__ import annotations

import math

import torch


def naive_select(gram: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor, knn: int = 3,
                 suppression: float = 0.2, stop: float = 0.1, sigma: float = 1.0, positive_only: bool = True) -> list[int]:
    n = gram.shape[0]
    cos = gram.double().tolist()
    a = attention.double().tolist()
    lab = labels.tolist()
    d = [[1.0 - cos[i][j] for j in range(n)] for i in range(n)]

    # rho: mean of the defined similarity terms of this sample.
    terms = []
    modalities = sorted(set(lab))
    for m in modalities:
        idx = [i for i in range(n) if lab[i] == m]
        if len(idx) >= 2:
            pairs = [cos[i][j] for x, i in enumerate(idx) for j in idx[x + 1:]]
            if positive_only:
                pairs = [p for p in pairs if p > 0]
            terms.append(sum(pairs) / len(pairs) if pairs else 0.0)
    for x, m in enumerate(modalities):
        for o in modalities[x + 1:]:
            pairs = [cos[i][j] for i in range(n) if lab[i] == m for j in range(n) if lab[j] == o]
            terms.append(sum(pairs) / len(pairs))
    rho = sum(terms) / len(terms) if terms else 0.0

    # kNN by d, self excluded, ties by lowest index.
    near = [sorted((j for j in range(n) if j != i), key=lambda j: (d[i][j], j))[:knn] for i in range(n)]
    g = []
    for i in range(n):
        value = a[i]
        for j in near[i]:
            value += math.exp(-d[i][j]) * a[j]
        g.append(value)
    kernel = [[math.exp(-(2.0 * d[i][j]) / (2.0 * sigma * sigma)) for j in range(n)] for i in range(n)]
    mean_k = sum(map(sum, kernel)) / (n * n)

    selected: list[int] = []
    out = set()
    while True:
        t = None
        for i in range(n):
            if i not in out and (t is None or g[i] > g[t]):
                t = i
        gain = max(g[t], 0.0)
        for j in near[t]:
            g[j] -= math.exp(-suppression * d[t][j]) * gain
        out.add(t)
        selected.append(t)
        m = len(selected)
        inner = sum(kernel[i][j] for i in selected for j in selected) / (m * m)
        cross = sum(kernel[i][j] for i in range(n) for j in selected) / (n * m)
        if mean_k + inner - 2.0 * cross < stop * math.sqrt(max(1.0 - rho, 0.0)) or m == n:
            return selected
