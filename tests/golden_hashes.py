"""What a pruning result is, as one hash: the masks and the saved weights, bit for bit.

The golden test compares these to hashes recorded before the pipeline refactor (issue 17), so a
change of the layers above the algorithms provably changes no result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from tampkit.store.artifacts import MASKS_FILE, load_masks


def masks_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, mask in sorted(load_masks(Path(folder) / MASKS_FILE).items()):
        digest.update(name.encode())
        digest.update(str(tuple(mask.shape)).encode())
        digest.update(mask.contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_hash(folder: Path) -> str:
    """Every tensor of the saved checkpoint (SparseGPT also changes the kept weights)."""
    digest = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("model*.safetensors")):
        tensors.update(load_file(str(file)))
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
