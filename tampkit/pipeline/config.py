"""The prune command's settings, validated before any model is loaded (fast, clear errors)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tampkit.core.allocation import validate_sparsity
from tampkit.core.devices import resolve_device
from tampkit.core.errors import UsageError
from tampkit.core.masks import Structure, parse_structure
from tampkit.methods.params import MethodParams
from tampkit.methods import METHODS

PROPAGATIONS = ("pruned", "dense")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def validate_settings(method: str, sparsity: float, structure: str, propagation: str, device: str, dtype: str,
                      nsamples: int, params: MethodParams) -> Structure:
    """The checks shared by `tamp prune` and params.yaml; returns the parsed structure."""
    if method not in METHODS:
        raise UsageError("--method", f"unknown method '{method}'", METHODS)
    validate_sparsity(sparsity)
    parsed = parse_structure(structure, sparsity)
    if propagation not in PROPAGATIONS:
        raise UsageError("--propagation", f"unknown value '{propagation}'", PROPAGATIONS)
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise UsageError("--device", f"unknown device '{device}'", DEVICES + ("cuda:N",))
    if dtype not in DTYPES:
        raise UsageError("--dtype", f"unknown dtype '{dtype}'", DTYPES)
    params.validate()
    if nsamples < 1:
        raise UsageError("--nsamples", f"must be at least 1, got {nsamples}")
    return parsed


@dataclass
class PruneConfig:
    model: str
    method: str
    sparsity: float
    out: Path
    structure: str = "unstructured"
    nsamples: int = 128
    seed: int = 42
    #: None: the model family's default (`Adapter.default_calibration`: builtin, or builtin-av for
    #: audio-video models, so that the documented one-liner exercises every modality they read).
    calibration: str | None = None
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
        structure = validate_settings(self.method, self.sparsity, self.structure, self.propagation, self.device,
                                      self.dtype, self.nsamples, self.params)
        out = Path(self.out)
        if out.exists() and not self.overwrite and any(out.iterdir() if out.is_dir() else [out]):
            raise UsageError("--out", f"{out} already exists", "a new path, or add --overwrite")
        return structure

    def compute_device(self) -> torch.device:
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["stats_cache"] = str(self.stats_cache) if self.stats_cache else None
        return data
