"""Stage masks: score and mask every block in order, one file per block (resumable, bit-identical on resume)."""

from __future__ import annotations

import json
from typing import Any

from tampkit.engine.masking import prune_blocks
from tampkit.engine.plan import Plan
from tampkit.methods.registry import make_scorer
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.stages.context import ALLOCATION_FILE, MANIFEST_FILE, StageContext, working_copy
from tampkit.store.artifacts import write_json
from tampkit.store.block_store import BlockStore

BLOCKS_FILE = "blocks.json"


def read_plan(layout: Layout) -> Plan:
    return Plan(**json.loads((layout.allocation / ALLOCATION_FILE).read_text())["plan"])


def example_sample(layout: Layout) -> int | None:
    """The first calibration sample with an image: the one whose token picks the report draws."""
    rows = json.loads((layout.calibration / MANIFEST_FILE).read_text())["samples"]
    return next((i for i, row in enumerate(rows) if row["image"]), None)


def run(ctx: StageContext) -> dict[str, Any]:
    """Every block scored and masked in order, one file each; which were read back or computed."""
    p = ctx.params
    bundle = working_copy(p)
    method = make_scorer(p.pair().scorer, p.amia_params(), p.method_label())
    method.example_sample = example_sample(ctx.layout)
    store = BlockStore(ctx.out, ctx.fingerprint, "masks")
    store.remove_beyond(len(bundle.adapter.decoder_layers(bundle.model)[1]))
    encoded = ctx.encoded() if method.needs_calibration else []
    result = prune_blocks(bundle, encoded, method, read_plan(ctx.layout).counts, p.structure(), ctx.device,
                          p.prune.propagation, ctx.progress, store, keep_masks=False)
    write_json(ctx.out / BLOCKS_FILE, result.blocks)
    return {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}
