"""Making and re-measuring an organism: training from its seed, its card, the machine it ran on.

Apart from `organism.store` (which only loads the shipped weights) so that the model plug-in, and
so every pipeline stage's code fingerprint, does not reach the training and evaluation code.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from tampkit.core.errors import UsageError
from tampkit.organism.store import check_name, load_organism, organism_card, organism_key


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

    check_name(name, "--train")
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
