"""Which torch device a `--device` / `model.device` value means."""

from __future__ import annotations

import torch

from tampkit.core.errors import UsageError


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when there is one; asking for CUDA without one is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device", f"{device} requested but CUDA is not available", ("auto", "cpu"))
    return torch.device(device)
