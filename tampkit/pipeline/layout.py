"""Where each stage of one run writes: one folder per stage under a store root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tampkit.pipeline.table import STAGE, STAGE_TABLE


@dataclass(frozen=True)
class Layout:
    """One folder per stage (plus `reports`, which the prune stage also writes). A sweep shares
    the shared stages' folders (calibration, stats) between its points."""

    calibration: Path
    stats: Path
    sensitivity: Path
    allocation: Path
    masks: Path
    pruned: Path
    reports: Path
    reference: Path
    metrics: Path

    @classmethod
    def under(cls, root: Path | str) -> Layout:
        """Every folder under one root (`artifacts/` for DVC, a run's folder in a sweep)."""
        root = Path(root)
        return cls(*(root / name for name in cls.__dataclass_fields__))

    @classmethod
    def shared(cls, shared_root: Path | str, run_root: Path | str) -> Layout:
        """The shared stages' folders under `shared_root`, the rest under `run_root`."""
        own, common = vars(cls.under(run_root)), vars(cls.under(shared_root))
        shared = {s.folder for s in STAGE_TABLE if s.shared}
        return cls(**{name: common[name] if name in shared else path for name, path in own.items()})

    def folder(self, stage: str) -> Path:
        """The folder holding the stage's record."""
        return getattr(self, STAGE[stage].folder)
