"""What a stage function gets, and the model the stages of one process share."""

from __future__ import annotations

import copy
import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tampkit.core.devices import resolve_device
from tampkit.models.adapters import ModelBundle
from tampkit.models.loading import load_model
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.params import Params
from tampkit.store.artifacts import temp_beside
from tampkit.store.records import load_encoded

INPUTS_FILE = "inputs.safetensors"
MANIFEST_FILE = "manifest.json"
ALLOCATION_FILE = "allocation.json"


@dataclass
class StageContext:
    """Validated params, the store, the stage's fingerprint and upstream records, its output folder."""

    params: Params
    layout: Layout
    fingerprint: str
    upstream: dict[str, dict[str, Any]]
    out: Path
    progress: bool = True

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params.model.device)

    def encoded(self) -> list[dict[str, torch.Tensor]]:
        """The calibration stage's tokenised inputs."""
        return load_encoded(self.layout.calibration / INPUTS_FILE)[0]


_PRISTINE: dict[tuple[str, str], ModelBundle] = {}


def pristine_model(params: Params) -> ModelBundle:
    """The unpruned model, loaded once per process (a flow's stages share it); never modify it."""
    key = (params.model.name, params.model.dtype, params.model.offload)
    if key not in _PRISTINE:
        _PRISTINE.clear()
        _PRISTINE[key] = load_model(*key)
    return _PRISTINE[key]


def working_copy(params: Params) -> ModelBundle:
    """A private copy of the model for stages that prune it."""
    bundle = pristine_model(params)
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows to CSV (columns in order of first appearance), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    tmp = temp_beside(path)
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
