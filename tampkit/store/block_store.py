"""One file per finished decoder block, so an interrupted stage resumes where it stopped.

A block file holds tensors (safetensors) and a small JSON record, plus in its header the
fingerprint of the configuration that produced it and a SHA-256 of its tensors. A file is reused
only when both match; anything else (another configuration, a truncated or edited file) is
recomputed with a warning, never trusted. Files are written to a temp name and renamed, so a kill
leaves either the whole block or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tampkit.core.log import warn
from tampkit.core.ranks import current_ranks
#: Fault injection for the resume tests and measurements: "STAGE:K" SIGKILLs this process right
#: after block K of stage STAGE is on disk (a real kill: no cleanup, no atexit).
KILL_ENV = "TAMPKIT_KILL_AFTER_BLOCK"


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class BlockStore:
    """Block files of one stage in `folder`, valid for one `fingerprint`."""

    def __init__(self, folder: Path, fingerprint: str, stage: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.stage = stage
        self.loaded: list[int] = []
        self.computed: list[int] = []
        self._foreign_reported = False

    def path(self, index: int) -> Path:
        return self.folder / f"block_{index:03d}.safetensors"

    def valid(self, index: int) -> bool:
        """Whether block `index` has a file `load` would accept (read and verified, then dropped:
        a resumed run checks every block first but holds one block's tensors at a time)."""
        found = self._read(index)
        return found is not None

    def load(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The block's tensors and record, or None (absent, foreign or damaged: recompute)."""
        found = self._read(index)
        if found is not None:
            self.loaded.append(index)
        return found

    def _read(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        path = self.path(index)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            record = json.loads(meta.get("record", "{}"))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types on damaged files
            warn(f"{self.stage}: unreadable {path.name} ({err}); recomputing block {index}")
            return None
        if meta.get("fingerprint") != self.fingerprint or meta.get("block") != str(index):
            if not self._foreign_reported:
                warn(f"{self.stage}: block files in {self.folder} were written for another configuration; "
                     "recomputing them")
                self._foreign_reported = True
            return None
        if meta.get("checksum") != tensor_checksum(tensors):
            warn(f"{self.stage}: checksum mismatch in {path.name}; recomputing block {index}")
            return None
        return tensors, record

    def save(self, index: int, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """Write the block's file (under torchrun rank 0 alone writes; every rank holds the same result)."""
        if not current_ranks().is_main:
            self.computed.append(index)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"fingerprint": self.fingerprint, "block": str(index), "checksum": tensor_checksum(tensors),
                "record": json.dumps(record)}
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        self.computed.append(index)
        self._maybe_die(index)

    def remove_beyond(self, count: int) -> None:
        """Drop block files of indices >= count (left by a model with more blocks); rank 0 only."""
        if not current_ranks().is_main:
            return
        for path in self.folder.glob("block_*.safetensors"):
            if int(path.stem.split("_")[1]) >= count:
                path.unlink()

    def _maybe_die(self, index: int) -> None:
        stage, _, block = os.environ.get(KILL_ENV, "").partition(":")
        if stage == self.stage and block.isdigit() and int(block) == index:
            os.kill(os.getpid(), signal.SIGKILL)
