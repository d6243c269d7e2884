"""Pure mask functions: which weights to zero, given scores and how many. True = pruned.

Ties are broken deterministically: a stable ascending sort prunes the lower column index first, so
the same scores always give the same mask, on any device.
"""

from __future__ import annotations

import numpy as np
import torch

from tampkit.core.errors import UsageError


def row_counts(total: int, rows: int) -> torch.Tensor:
    """Spread `total` pruned weights over `rows` rows: floor(total/rows) each, one more in the
    first total % rows rows, so no weight is lost to per-row rounding."""
    base, extra = divmod(int(total), rows)
    counts = torch.full((rows,), base, dtype=torch.long)
    counts[:extra] += 1
    return counts


#: Scores sorted at once by `mask_per_row`: rows are sorted in slices of about this many entries, so
#: the sort's values and int64 indices (12 bytes an entry) stay ~50 MB whatever the matrix.
SORT_SLICE = 1 << 22


def mask_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Prune the counts[r] lowest-scoring entries of each row r (Wanda's comparison group).
    Rows are independent, so they are sorted a slice at a time (the same mask as all at once)."""
    rows, cols = scores.shape
    counts = counts.to(scores.device)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    step = max(1, SORT_SLICE // max(cols, 1))
    for start in range(0, rows, step):
        order = torch.sort(scores[start:start + step], dim=1, stable=True).indices
        ranks = torch.arange(cols, device=scores.device).expand_as(order)
        mask[start:start + step].scatter_(1, order, ranks < counts[start:start + step, None])
    return mask


def mask_per_matrix(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Prune the `count` lowest-scoring entries of the whole matrix (layer-wise magnitude)."""
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    mask[order[: int(count)]] = True
    return mask.reshape(scores.shape)


def mask_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In each group of m consecutive input columns of each row, prune the n lowest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise UsageError("--structure", f"{n}:{m} needs input width divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    pruned_sorted = torch.arange(m, device=scores.device).expand_as(order) < n
    return torch.zeros_like(pruned_sorted).scatter_(2, order, pruned_sorted).reshape(rows, cols)


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Bit-pack a boolean mask (8 weights per byte), row-major."""
    return np.packbits(mask.detach().cpu().numpy().reshape(-1))


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    count = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed, count=count).astype(bool).reshape(shape))
