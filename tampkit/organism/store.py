"""Where trained organisms live: trained once per machine, then loaded like any saved model.

`organism_folder(name)` is `$TAMPKIT_CACHE/organisms/<name>-<key>` (default cache: ~/.cache/tampkit),
where the key hashes the spec and the source of every module the weights depend on: editing the
generator, the tokenizer or the training code trains a new organism instead of loading a stale one.
The first call trains (a file lock keeps concurrent callers from training twice), measures the
model card on the test split, and renames the finished folder into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from tampkit.errors import UsageError
from tampkit.models.adapters import ModelBundle
from tampkit.organism.card import CARD_JSON, measure_card, write_card
from tampkit.organism.model import SPECS, train

_SOURCES = ("scenes.py", "questions.py", "tokenizer.py", "model.py")


def cache_root() -> Path:
    return Path(os.environ.get("TAMPKIT_CACHE", Path.home() / ".cache" / "tampkit")).expanduser()


def organism_key(name: str) -> str:
    digest = hashlib.sha256(json.dumps(SPECS[name].to_dict(), sort_keys=True).encode())
    package = resources.files("tampkit.organism")
    for source in _SOURCES:
        digest.update((package / source).read_bytes())
    return digest.hexdigest()[:12]


def organism_folder(name: str, progress: bool = True) -> Path:
    """The trained organism's `save_pretrained` folder, training it first if this machine lacks it."""
    if name not in SPECS:
        raise UsageError("--model", f"unknown organism '{name}'", list(SPECS))
    folder = cache_root() / "organisms" / f"{name}-{organism_key(name)}"
    if (folder / CARD_JSON).exists():
        return folder
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / CARD_JSON).exists():  # another process finished it while we waited
            return folder
        bundle, log = train(SPECS[name], progress=progress)
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            bundle.model.save_pretrained(tmp)
            bundle.processor.save_pretrained(tmp)
            card = measure_card(bundle, SPECS[name], log, progress=progress)
            write_card(tmp, card)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def organism_card(name: str) -> dict[str, Any]:
    return json.loads((organism_folder(name) / CARD_JSON).read_text())


def load_organism(name: str) -> ModelBundle:
    """The alias `organism` / `organism-mini`: the trained folder, loaded as a saved model."""
    from tampkit.models.loading import load_model

    bundle = load_model(str(organism_folder(name)))
    bundle.name = name
    return bundle
