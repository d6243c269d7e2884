"""`tamp organism`: make sure an organism is trained on this machine and copy it (weights, processor,
model card) into an output folder: what the DVC stage `organism` versions.

With `--from-params`, the organism named by params.yaml's model.name; for any other model the
folder only records that no organism is used, so the stage costs nothing in the default pipeline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tampkit.artifacts import atomic_directory
from tampkit.organism.card import CARD_JSON, CARD_MD
from tampkit.organism.model import SPECS
from tampkit.organism.store import organism_folder, organism_key


def export_organism(name: str, out: Path, progress: bool = True) -> Path:
    """Copy organism `name` (trained first if needed) to `out`, atomically; returns `out`."""
    with atomic_directory(out, overwrite=True) as tmp:
        if name in SPECS:
            source = organism_folder(name, progress=progress)
            shutil.copytree(source, tmp / "model")
            shutil.copy2(source / CARD_MD, tmp / CARD_MD)
            card = json.loads((source / CARD_JSON).read_text())
            summary = {"organism": name, "key": organism_key(name), "accuracy": card["accuracy"],
                       "training_seconds": card["training"]["seconds"]}
        else:
            summary = {"organism": None, "model": name}
        (tmp / "organism.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out
