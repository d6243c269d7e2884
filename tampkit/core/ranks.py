"""Data-parallel calibration under `torchrun`: which samples this process measures, and the few
collectives the engine needs (sums in rank order, broadcasts from rank 0, barriers).

Every rank holds the whole model and measures a contiguous shard of the calibration samples.
Per block, each statistic is summed over ranks *in rank order* (gathered, then added 0, 1, 2, ...),
never with `all_reduce`, whose order the backend picks: the result is the same on every rank and
in every run, whatever the timing. Rank 0 then decides the masks and broadcasts them, so every
rank applies the same ones and propagates its own shard through the same pruned block.

Against one process the only difference is the grouping of the sums ((x0+x1)+(x2+x3) instead of
((x0+x1)+x2)+x3): the last bits of the statistics, hence a handful of masks entries at ties.

A process not started by torchrun (WORLD_SIZE unset or 1) is `SINGLE`: every call is a no-op,
so the one-process path runs exactly as before.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tampkit.core.errors import UsageError

#: Minutes a rank waits for the others in a collective (default 12 hours).
TIMEOUT_ENV = "TAMPKIT_DIST_TIMEOUT_MIN"
#: Overrides the backend torchrun's ranks use (default: nccl when CUDA is there, else gloo).
BACKEND_ENV = "TAMPKIT_DIST_BACKEND"


def sum_in_order(parts: "torch.Tensor | list[torch.Tensor]") -> torch.Tensor:
    """parts[0] + parts[1] + ... added left to right (a new tensor): the one order in which a
    statistic's per-sample (or per-rank) values are summed, whoever holds them."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    #: Where tensors go for the collectives: CPU under gloo, this rank's GPU under NCCL.
    comm_device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, takes locks, decides masks and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def shard(self, count: int) -> range:
        """This rank's contiguous share of `count` samples (sizes differ by at most one)."""
        if self.parallel and count < self.world:
            raise UsageError("calibration.nsamples", f"{count} samples cannot be split over {self.world} ranks",
                             f"at least {self.world} samples, or fewer ranks")
        return range(count * self.rank // self.world, count * (self.rank + 1) // self.world)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks, added in rank order; same bits on every rank."""
        if not self.parallel:
            return tensor
        local = tensor.detach().to(self.comm_device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return sum_in_order(parts).to(tensor.device)

    def concat(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows [n_rank, ...] stacked in rank order (= sample order for contiguous
        shards): per-sample values gathered whole, so a fold over them adds in the one-process order."""
        if not self.parallel:
            return rows
        counts = self.gather(int(rows.shape[0]))
        local = rows.detach().to(self.comm_device).contiguous()
        padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=local.device)
        padded[: rows.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(rows.device)

    def sum_int(self, value: int) -> int:
        return int(self.sum(torch.tensor([value], dtype=torch.int64)).item()) if self.parallel else value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's picklable `value`, in rank order (small things: counts, per-sample records)."""
        if not self.parallel:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank (same shape and dtype expected everywhere)."""
        if not self.parallel:
            return tensor
        buffer = tensor.detach().to(self.comm_device).contiguous()
        if buffer.dtype == torch.bool:  # not every backend sends bools
            buffer = buffer.to(torch.uint8)
        dist.broadcast(buffer, src=0)
        return buffer.to(device=tensor.device, dtype=tensor.dtype)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's picklable `value` on every rank (a decision, a path, a record)."""
        if not self.parallel:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


SINGLE = Ranks()


def current_ranks() -> Ranks:
    """The ranks of the process group torchrun started (SINGLE when there is none)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def init_from_env() -> Ranks:
    """Join torchrun's process group when this process is one of several ranks (WORLD_SIZE > 1).

    gloo on CPU, NCCL when CUDA is available (each rank on GPU LOCAL_RANK); TAMPKIT_DIST_BACKEND
    overrides. Called once by the CLI before any stage runs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return SINGLE
    if not dist.is_initialized():
        backend = os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl"):
            raise UsageError(BACKEND_ENV, f"unknown backend '{backend}'", ["gloo", "nccl"])
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0 alone runs calibration, allocation, checkpoint and evaluation while the others
        # wait for its word: the default 30-minute collective timeout is too short for a big model
        minutes = float(os.environ.get(TIMEOUT_ENV, "720"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
        atexit.register(_leave)
    return current_ranks()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
