"""One dense forward per block for the Wanda family under dense propagation (issue 20, item 2).

With `prune.propagation: dense` every block of the masks stage sees the dense inputs the stats stage
already ran, so a Wanda-family scorer's per-Linear scaler does not depend on any mask:
- `wanda`: the stats stage's own Wanda scalers are that statistic (same sums, same order);
- `amia-wanda`: the stats stage measures AMIA-Wanda in the same forward as the DAS terms and keeps
  its scalers and block summaries in `stats/selection/`, one file per block;
and the masks stage builds every mask from the stored scalers without running the model.

This applies only where the stats stage runs at all (a DAS or OWL allocation, unstructured); other
runs keep the masks stage's own forward (already one per block under dense propagation). SparseGPT
and AMIA-SparseGPT need their Hessians and keep the two passes.

Fingerprints: the dense statistics are the same bits with or without the selection (tested), so
the stats stage's fingerprint does not change and a sweep still shares them. The selection files
carry their own fingerprint: the stats stage's, AMIA's constants, the sample whose picks the report
draws, and the code of the scorer (hashed here: the stats stage does not import AMIA's modules, so
editing AMIA leaves the dense statistics valid and only the selection files stale). Where they are
missing or stale (the stats stage was reused from a run that did not gather them), the masks stage
measures as before: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tampkit.pipeline.imports import code_files, relative
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.params import Params
from tampkit.pipeline.stages.context import MANIFEST_FILE
from tampkit.store.block_store import BlockStore

#: The selection's block files, inside the stats stage's folder.
SELECTION_FOLDER = "selection"
#: Scorers whose masks follow from one scaler per Linear (|W| * sqrt(scaler), per row).
ONE_PASS_SCORERS = ("wanda", "amia-wanda")


def example_sample(layout: Layout) -> int | None:
    """The first calibration sample with an image: the one whose token picks the report draws."""
    rows = json.loads((layout.calibration / MANIFEST_FILE).read_text())["samples"]
    return next((i for i, row in enumerate(rows) if row["image"]), None)


def one_pass_scorer(params: Params) -> str | None:
    """The run's scorer when its masks can come from the stats stage's forward, else None."""
    scorer = params.pair().scorer
    if params.prune.propagation == "dense" and scorer in ONE_PASS_SCORERS and params.needs_dense_stats():
        return scorer
    return None


def selection_scorer(params: Params) -> Any:
    """The scorer the stats stage measures beside the dense statistics (None: only those).

    Imported by name, so that AMIA's modules stay out of the stats stage's code (see the module doc)."""
    if one_pass_scorer(params) != "amia-wanda":
        return None
    registry = importlib.import_module("tampkit.methods.registry")
    return registry.make_scorer("amia-wanda", params.amia_params(), params.method_label())


def selection_fingerprint(stats_fingerprint: str, params: Params, example: int | None) -> str:
    """What the selection files depend on beyond the dense statistics' inputs."""
    digest = hashlib.sha256()
    for file in code_files("tampkit.methods.amia_wanda"):
        digest.update(relative(file).encode())
        digest.update(file.read_bytes())
    payload = {"stats": stats_fingerprint, "scorer": "amia-wanda", "amia": params.amia_params().__dict__,
               "example_sample": example, "code": digest.hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def selection_store(stats_folder: Path, fingerprint: str) -> BlockStore:
    return BlockStore(Path(stats_folder) / SELECTION_FOLDER, fingerprint, "stats (selection)")


def stored_scalers(params: Params, layout: Layout, stats_fingerprint: str | None,
                   blocks: int) -> Callable[[int], tuple[dict[str, torch.Tensor], dict]] | None:
    """For the masks stage: block index -> (scalers, summary) when every block's scalers are on disk
    for this run, else None (then the masks stage runs its own forward)."""
    scorer = one_pass_scorer(params)
    if scorer is None or stats_fingerprint is None:
        return None
    if scorer == "wanda":
        store = BlockStore(layout.stats, stats_fingerprint, "stats")
    else:
        store = selection_store(layout.stats, selection_fingerprint(stats_fingerprint, params, example_sample(layout)))
    if not all(store.valid(i) for i in range(blocks)):
        return None

    def scalers(index: int) -> tuple[dict[str, torch.Tensor], dict]:
        found = store.load(index)
        if found is None:
            raise RuntimeError(f"masks: block {index}'s stored scalers changed during the run ({store.path(index)})")
        tensors, record = found
        return tensors, record.get("summary", {}) if scorer == "amia-wanda" else {}

    return scalers
