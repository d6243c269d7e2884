"""The artifact store of the pipeline: where each stage writes, its record, its fingerprint.

Every stage folder ends with `stage.json`, written last: the stage's fingerprint (a hash of the
fingerprints of the stages it reads, the params it reads, the identity of the model and the source
of the code it runs), what it reused and what it computed, and how long it took. A stage whose
folder holds a record with the same fingerprint is up to date; DVC, Prefect and a plain rerun all
rely on that one rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tampkit.store.artifacts import write_json

STAGES = ("calibrate", "stats", "allocate", "masks", "prune", "evaluate")
#: The stages whose records each stage reads (its fingerprint includes theirs).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "calibrate": (),
    "stats": ("calibrate",),
    "allocate": ("calibrate", "stats"),
    "masks": ("calibrate", "allocate"),
    "prune": ("calibrate", "allocate", "masks"),
    "evaluate": ("prune",),
}
#: Library sources each stage's results depend on (package-relative files or folders).
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "calibrate": ("calibration", "models"),
    "stats": ("engine/dense_stats.py", "core/diversity.py", "core/output_grams.py", "engine/runner.py", "store/block_store.py", "models"),
    "allocate": ("core/allocation.py", "engine/plan.py", "methods/wanda.py", "engine/dense_stats.py"),
    "masks": ("engine/masking.py", "engine/runner.py", "engine/attention_rows.py", "core/amia.py", "core/output_grams.py", "core/diversity.py", "core/masks.py",
              "methods", "store/block_store.py", "models"),
    "prune": ("pipeline/prune_command.py", "store/artifacts.py", "reporting/report.py", "reporting/plots.py", "engine/masking.py"),
    "evaluate": ("evaluation", "calibration/builtin.py", "calibration/data/heldout_qa.json",
                 "calibration/data/heldout.txt"),
}
RECORD = "stage.json"
PACKAGE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Layout:
    """One folder per stage. A sweep shares calibration and stats between runs."""

    calibration: Path
    stats: Path
    allocation: Path
    masks: Path
    pruned: Path
    reports: Path
    metrics: Path

    @classmethod
    def under(cls, root: Path | str) -> Layout:
        root = Path(root)
        return cls(*(root / name for name in ("calibration", "stats", "allocation", "masks", "pruned", "reports",
                                              "metrics")))

    @classmethod
    def shared(cls, shared_root: Path | str, run_root: Path | str) -> Layout:
        """Calibration and dense statistics under `shared_root`, the rest under `run_root`."""
        own = cls.under(run_root)
        common = cls.under(shared_root)
        return cls(common.calibration, common.stats, own.allocation, own.masks, own.pruned, own.reports, own.metrics)

    def folder(self, stage: str) -> Path:
        """The folder holding the stage's record."""
        return {"calibrate": self.calibration, "stats": self.stats, "allocate": self.allocation,
                "masks": self.masks, "prune": self.pruned, "evaluate": self.metrics}[stage]


def code_version(stage: str) -> str:
    """SHA-256 of the library sources the stage depends on (see STAGE_CODE)."""
    digest = hashlib.sha256()
    for entry in STAGE_CODE[stage]:
        target = PACKAGE / entry
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for file in files:
            digest.update(str(file.relative_to(PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def fingerprint(stage: str, params: dict[str, Any], upstream: dict[str, str], model: str, code: str) -> str:
    payload = {"stage": stage, "params": params, "upstream": upstream, "model": model, "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json(Path(folder) / RECORD, record)


def save_encoded(path: Path, encoded: list[dict[str, torch.Tensor]], labels: list[torch.Tensor]) -> None:
    """The tokenised calibration inputs exactly as the model takes them, plus per-token modalities."""
    tensors = {}
    for i, (batch, label) in enumerate(zip(encoded, labels)):
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"sample {i}: input {key} is not a tensor ({type(value).__name__})")
            tensors[f"{i:05d}/{key}"] = value.contiguous()
        tensors[f"{i:05d}/#labels"] = label.contiguous()
    save_file(tensors, str(path), metadata={"samples": str(len(encoded))})


def load_encoded(path: Path) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        count = int((handle.metadata() or {})["samples"])
        encoded: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
        labels: list[torch.Tensor] = [torch.empty(0)] * count
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
            index, _, name = key.partition("/")
            if name == "#labels":
                labels[int(index)] = handle.get_tensor(key)
            else:
                encoded[int(index)][name] = handle.get_tensor(key)
    return encoded, labels
