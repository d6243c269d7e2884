"""DAS diversity terms of one Linear's output tokens (TAMP, Phase A). Pure functions.

For a sample's output rows Y [N, d] with a modality label per token:
- intra term of modality m: mean cosine similarity over pairs i<j of m's tokens; the official code
  counts only the positive entries (mean over the positive pairs), kept as the default switch;
- cross term of modalities m<n: mean cosine similarity over all (i in m, j in n), negatives included.
A term exists only where its modality has >= 2 tokens (>= 1 each for a cross term); the official
code divides by zero there and its AMIA loop never ends. D_k = sum over terms of (1 - similarity).
"""

from __future__ import annotations

from itertools import combinations

import torch

from tampkit.models.adapters import MODALITIES


def term_name(m: int, n: int | None = None) -> str:
    return MODALITIES[m] if n is None else f"{MODALITIES[m]}-{MODALITIES[n]}"


def similarity_terms(gram: torch.Tensor, labels: torch.Tensor, positive_only: bool = True) -> dict[str, float]:
    """Similarity per defined term from the cosine Gram matrix of one sample's outputs.

    Sums accumulate in float64; the intra term reads the strict upper triangle (i < j) only.
    """
    labels = labels.to(gram.device)
    present = sorted(int(m) for m in torch.unique(labels))
    index = {m: (labels == m).nonzero().reshape(-1) for m in present}
    terms: dict[str, float] = {}
    for m in present:
        idx = index[m]
        if len(idx) < 2:
            continue
        upper = torch.triu(_square(gram, idx), diagonal=1)
        if positive_only:
            positive = upper > 0
            count = int(positive.sum())
            total = float(torch.where(positive, upper, 0.0).sum(dtype=torch.float64))
        else:
            count = len(idx) * (len(idx) - 1) // 2
            total = float(upper.sum(dtype=torch.float64))
        terms[term_name(m)] = total / count if count else 0.0
    for m, n in combinations(present, 2):
        cross = gram.index_select(0, index[m]).index_select(1, index[n])
        terms[term_name(m, n)] = float(cross.sum(dtype=torch.float64)) / cross.numel()
    return terms


def _square(gram: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """gram[idx][:, idx], as a view when idx is one contiguous run (image tokens usually are)."""
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == len(idx):
        return gram[first:last + 1, first:last + 1]
    return gram.index_select(0, idx).index_select(1, idx)


def cosine_gram(y: torch.Tensor) -> torch.Tensor:
    """Y_hat Y_hat^T with rows L2-normalised (zero rows stay zero)."""
    normalised = torch.nn.functional.normalize(y.float(), dim=1)
    return normalised @ normalised.T


def diversity(similarities: dict[str, float]) -> float:
    """D_k = sum over terms of (1 - s)."""
    return sum(1.0 - s for s in similarities.values())


class TermAverager:
    """Average each term over the samples where it is defined (equal weight per sample)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, float]) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in sorted(self.sums)}
