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
import os
import platform
from importlib import resources
from pathlib import Path
from typing import Any

from tampkit.core.errors import UsageError
from tampkit.models.adapters import ModelBundle
from tampkit.organism import NAMES
from tampkit.organism.card import CARD_JSON

#: The shipped organisms, one `save_pretrained` folder per name.
SHIPPED = Path(__file__).resolve().parent / "shipped"
WEIGHTS_FILE = "model.safetensors"
_SOURCES = ("scenes.py", "questions.py", "tokenizer.py", "model.py")


def _check_name(name: str, field: str = "--model") -> None:
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
    _check_name(name)
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


def machine_info() -> dict[str, Any]:
    """What a trained organism's weights depend on besides the code: CPU, threads, library versions."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def train_organism(name: str, out: Path, overwrite: bool = False, progress: bool = True,
                   checkpoints: Path | None = None) -> Path:
    """Train organism `name` from its seed, measure its card, write the folder `out` atomically
    (and, with `checkpoints`, intermediate weights there to watch the training)."""
    from tampkit.store.artifacts import atomic_directory
    from tampkit.organism.card import measure_card, write_card
    from tampkit.organism.model import SPECS, train

    _check_name(name, "--train")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError("--out", f"{out} exists", "pass --overwrite to replace it")
    with atomic_directory(out, overwrite=True) as tmp:
        bundle, log = train(SPECS[name], progress=progress, checkpoints=checkpoints)
        bundle.model.save_pretrained(tmp)
        bundle.processor.save_pretrained(tmp)
        card = measure_card(bundle, SPECS[name], log, progress=progress)
        card["trained_on"] = machine_info()
        card["code_key"] = organism_key(name)
        write_card(tmp, card)
    return out


def remeasure(name: str, progress: bool = False) -> dict[str, Any]:
    """The shipped organism's card with its accuracies (and blind baselines) measured again on this
    machine: what a test compares with the shipped card (greedy answers can only flip on near-ties
    across CPUs; the blind baselines are pure Python and must be equal)."""
    from tampkit.organism.scene_qa import scene_qa, test_questions
    from tampkit.organism.blind import blind_baselines

    card = organism_card(name)
    bundle = load_organism(name)
    questions = test_questions(card["test_scenes"])
    accuracy = {mode: scene_qa(bundle, questions, image=mode, progress=progress)[0] for mode in card["accuracy"]}
    return {**card, "accuracy": accuracy, "blind": blind_baselines(questions), "measured_on": machine_info()}
