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

from tampkit.core.types import MODALITIES


def term_name(m: int, n: int | None = None) -> str:
    return MODALITIES[m] if n is None else f"{MODALITIES[m]}-{MODALITIES[n]}"


def similarity_terms(gram: torch.Tensor, labels: torch.Tensor, positive_only: bool = True) -> dict[str, float]:
    """Similarity per defined term from the cosine Gram matrix of one sample's outputs."""
    return similarity_terms_batch(gram[None], labels, positive_only)[0]


def similarity_terms_batch(grams: torch.Tensor, labels: torch.Tensor, positive_only: bool = True) -> list[dict[str, float]]:
    """`similarity_terms` for L Gram matrices [L, N, N] of the same sample (one per Linear).

    The intra term reads the strict upper triangle (i < j) only. Sums are fp32 with torch's
    cascade summation (relative error ~1e-7; an fp64 accumulation costs ~10x on CPU here, and
    these sums run for every Linear and sample). Batching the Linears of a block keeps the
    Python overhead per sample, not per Linear.
    """
    labels = labels.to(grams.device)
    present = sorted(int(m) for m in torch.unique(labels))
    index = {m: (labels == m).nonzero().reshape(-1) for m in present}
    columns: dict[str, torch.Tensor] = {}
    for m in present:
        idx = index[m]
        if len(idx) < 2:
            continue
        upper = torch.triu(_square(grams, idx), diagonal=1)
        if positive_only:
            upper.clamp_min_(0.0)
            positive = upper > 0
            # fp32 counts are exact below 2^24 entries per matrix
            count = positive.float().sum((1, 2)) if len(idx) < 4096 else positive.sum((1, 2))
            total = upper.sum((1, 2)).double()
            columns[term_name(m)] = torch.where(count > 0, total / count.double().clamp_min(1), 0.0)
        else:
            columns[term_name(m)] = upper.sum((1, 2)).double() / (len(idx) * (len(idx) - 1) // 2)
    for m, n in combinations(present, 2):
        cross = _block(grams, index[m], index[n])
        columns[term_name(m, n)] = cross.sum((1, 2)).double() / (cross.shape[1] * cross.shape[2])
    values = {name: column.tolist() for name, column in columns.items()}
    return [{name: values[name][b] for name in values} for b in range(grams.shape[0])]


def _run(idx: torch.Tensor) -> slice | None:
    """idx as a slice when it is one contiguous run (image tokens usually are)."""
    first, last = int(idx[0]), int(idx[-1])
    return slice(first, last + 1) if last - first + 1 == len(idx) else None


def _square(grams: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return _block(grams, idx, idx)


def _block(grams: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """grams[:, rows][:, :, cols], as a view where both index sets are contiguous."""
    r, c = _run(rows), _run(cols)
    out = grams[:, r] if r is not None else grams.index_select(1, rows)
    return out[:, :, c] if c is not None else out.index_select(2, cols)


def cosine_gram(y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Y_hat Y_hat^T with rows L2-normalised (zero rows stay zero); into `out` when given."""
    normalised = torch.nn.functional.normalize(y.float(), dim=1)
    return torch.matmul(normalised, normalised.T, out=out)


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
