"""The prune command's settings, validated before any model is loaded (fast, clear errors)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tampkit.allocation import validate_sparsity
from tampkit.errors import UsageError
from tampkit.masks import Structure, parse_structure
from tampkit.method_params import MethodParams
from tampkit.methods import METHODS

PROPAGATIONS = ("pruned", "dense")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class PruneConfig:
    model: str
    method: str
    sparsity: float
    out: Path
    structure: str = "unstructured"
    nsamples: int = 128
    seed: int = 42
    calibration: str = "builtin"
    propagation: str = "pruned"
    device: str = "auto"
    dtype: str = "auto"
    overwrite: bool = False
    eval_ppl: bool = False
    params: MethodParams = field(default_factory=MethodParams)
    #: Folder of cached dense statistics (DAS terms, OWL scalers); None: compute, do not keep.
    stats_cache: Path | None = None
    plots: bool = True

    def validate(self) -> Structure:
        """Check every field; return the parsed structure. Raises UsageError on the first bad one."""
        if self.method not in METHODS:
            raise UsageError("--method", f"unknown method '{self.method}'", METHODS)
        validate_sparsity(self.sparsity)
        structure = parse_structure(self.structure, self.sparsity)
        if self.propagation not in PROPAGATIONS:
            raise UsageError("--propagation", f"unknown value '{self.propagation}'", PROPAGATIONS)
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise UsageError("--device", f"unknown device '{self.device}'", DEVICES + ("cuda:N",))
        if self.dtype not in DTYPES:
            raise UsageError("--dtype", f"unknown dtype '{self.dtype}'", DTYPES)
        self.params.validate()
        if self.nsamples < 1:
            raise UsageError("--nsamples", f"must be at least 1, got {self.nsamples}")
        out = Path(self.out)
        if out.exists() and not self.overwrite and any(out.iterdir() if out.is_dir() else [out]):
            raise UsageError("--out", f"{out} already exists", "a new path, or add --overwrite")
        return structure

    def compute_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device", f"{self.device} requested but CUDA is not available", ("auto", "cpu"))
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["stats_cache"] = str(self.stats_cache) if self.stats_cache else None
        return data
