"""Stage records and the tokenised calibration inputs, as files.

Every stage folder ends with `stage.json`, written last: the stage's fingerprint (a hash of the
fingerprints of the stages it reads, the params it reads, the identity of the model and the source
of the code it runs), what it reused and what it computed, and how long it took. A stage whose
folder holds a record with the same fingerprint is up to date; DVC, Prefect and a plain rerun all
rely on that one rule.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tampkit.store.artifacts import read_json, write_json

RECORD = "stage.json"


def fingerprint(stage: str, params: dict[str, Any], upstream: dict[str, str], model: str, code: str) -> str:
    payload = {"stage": stage, "params": params, "upstream": upstream, "model": model, "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    return read_json(Path(folder) / RECORD)


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
