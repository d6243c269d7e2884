"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with weight reconstruction.

H = 2/n sum_samples X^T X; damping 1% of mean(diag H); columns in blocks of 128; within a block the
mask is chosen from w^2 / [H^-1]_jj^2 over the block (all rows), then each column is pruned and the
error is spread over the remaining columns. Our one change: the per-block pruned counts are laid
out by cumulative rounding so the matrix prunes exactly its allocated count.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.masks import mask_per_matrix

from tampkit.core.ranks import Ranks
from tampkit.core.types import SampleContext, Structure
from tampkit.methods.base import PruningMethod


def _block_counts(total: int, cols: int, blocksize: int) -> list[int]:
    edges = list(range(0, cols, blocksize)) + [cols]
    cumulative = [total * e // cols for e in edges]
    return [b - a for a, b in zip(cumulative, cumulative[1:])]


def _inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, raising the damping until H is positive definite."""
    eye = torch.eye(hessian.shape[0], device=hessian.device, dtype=hessian.dtype)
    damp = percdamp * torch.mean(torch.diag(hessian))
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
        damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=hessian.device)
    raise RuntimeError("SparseGPT: Hessian is not positive definite even with heavy damping")


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, count: int, structure: Structure,
                    blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (updated weight in fp32, or fp64 for an fp64 weight, mask); `weight` and `hessian` are
    not modified."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    W = weight.detach().to(dtype).clone()
    H = hessian.to(dtype).clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = _inverse_hessian_cholesky(H, percdamp)
    mask = torch.zeros_like(W, dtype=torch.bool)
    block_counts = _block_counts(count, cols, blocksize)
    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag1 = torch.diag(Hinv1)
        if structure.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            mask1 = mask_per_matrix(W1 ** 2 / diag1[None, :] ** 2, block_counts[b])
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if structure.is_nm and i % structure.m == 0:
                scores = W1[:, i:i + structure.m] ** 2 / diag1[i:i + structure.m][None, :] ** 2
                picked = torch.sort(scores, dim=1, stable=True).indices[:, : structure.n]
                mask1.scatter_(1, i + picked, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    return W, mask


class SparseGPT(PruningMethod):
    name = "sparsegpt"
    updates_weights = True

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.reset()

    def reset(self) -> None:
        self.xtx: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        self.add_rows(name, x)

    def add_rows(self, name: str, rows: torch.Tensor) -> None:
        """Add one sample's token rows to X^T X (all of them here, AMIA's picks for AMIA-SparseGPT)."""
        gram = rows.T @ rows
        if name in self.xtx:
            self.xtx[name] += gram
        else:
            self.xtx[name] = gram
        self.samples[name] = self.samples.get(name, 0) + 1

    def reduce(self, ranks: Ranks) -> None:
        """Each rank's partial X^T X, added in rank order (a d x d matrix per sample would not fit)."""
        super().reduce(ranks)
        for name in sorted(self.xtx):
            self.xtx[name] = ranks.sum(self.xtx[name])
            self.samples[name] = ranks.sum_int(self.samples[name])

    def prune(self, linears: dict[str, nn.Linear], counts: dict[str, int], structure: Structure) -> dict[str, torch.Tensor]:
        masks = {}
        for name, linear in linears.items():
            hessian = self.xtx[name] * (2.0 / self.samples[name])
            new_weight, mask = sparsegpt_prune(linear.weight, hessian, counts[name], structure, self.blocksize, self.percdamp)
            with torch.no_grad():
                linear.weight.copy_(new_weight.to(linear.weight.dtype))
            masks[name] = mask.cpu()
        return masks
