"""Where the trained organisms live: shipped with the package, trained only when asked.

Training is deterministic on one machine at one thread count, not across CPUs: the same seed and
code gave organism-mini 0.493 scene accuracy on one machine and 0.455 on another, and 0.483 on the
second at two threads. A yardstick that changes with the CPU is no yardstick, so the weights that
results depend on are made once and shipped in `tampkit/organism/shipped/<name>/` (the
`save_pretrained` folder with its processor, `card.json` and `model_card.md`); every machine loads
those. `train_organism` (`tamp organism --train NAME`) remakes one with the same code and writes a
new folder whose card records the machine and threads it was trained with; replacing a shipped
organism is a deliberate copy into `shipped/`, never a side effect of loading.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from tampkit.core.errors import UsageError
from tampkit.models.adapters import ModelBundle
from tampkit.organism import NAMES

#: The shipped organisms, one `save_pretrained` folder per name.
SHIPPED = Path(__file__).resolve().parent / "shipped"
WEIGHTS_FILE = "model.safetensors"
#: The card beside the weights: what the organism scores, measured when it was trained.
CARD_JSON = "card.json"
_SOURCES = ("scenes.py", "questions.py", "tokenizer.py", "model.py")


def check_name(name: str, field: str = "--model") -> None:
    if name not in NAMES:
        raise UsageError(field, f"unknown organism '{name}'", list(NAMES))


def organism_key(name: str) -> str:
    """Provenance, not identity: a hash of the spec and the source of the code that trains the
    organism. A shipped card whose key differs from this was trained by other code."""
    from tampkit.organism.model import SPECS

    digest = hashlib.sha256(json.dumps(SPECS[name].to_dict(), sort_keys=True).encode())
    package = resources.files("tampkit.organism")
    for source in _SOURCES:
        digest.update((package / source).read_bytes())
    return digest.hexdigest()[:12]


def shipped_folder(name: str) -> Path:
    """The shipped organism's folder; an error naming the way out when it is missing."""
    check_name(name)
    folder = SHIPPED / name
    if not (folder / CARD_JSON).exists() or not (folder / WEIGHTS_FILE).exists():
        raise UsageError("--model", f"organism '{name}' is not shipped in {folder}",
                         f"train it with `tamp organism --train {name} --out {folder}`")
    return folder


def organism_card(name: str) -> dict[str, Any]:
    return json.loads((shipped_folder(name) / CARD_JSON).read_text())


def weights_identity(name: str) -> str:
    """What names the shipped weights for fingerprints: their bytes (a clone's mtimes differ)."""
    digest = hashlib.sha256((shipped_folder(name) / WEIGHTS_FILE).read_bytes())
    return f"organism:{name}:{digest.hexdigest()[:16]}"


def load_organism(name: str) -> ModelBundle:
    """The alias `organism` / `organism-mini`: the shipped folder, loaded as a saved model."""
    from tampkit.models.loading import load_model

    bundle = load_model(str(shipped_folder(name)))
    bundle.name = name
    return bundle
