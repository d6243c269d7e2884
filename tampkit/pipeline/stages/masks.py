"""Stage masks: score and mask every block in order, one file per block (resumable, bit-identical on resume).

Wanda-family scorers under dense propagation whose scalers the stats stage stored (see
`tampkit.pipeline.one_pass`) get their masks from them without a forward; the others measure here."""

from __future__ import annotations

import json
from typing import Any

from tampkit.engine.masking import prune_blocks, prune_from_scalers
from tampkit.engine.plan import Plan
from tampkit.methods.registry import make_scorer
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.one_pass import example_sample, stored_scalers
from tampkit.pipeline.stages.context import ALLOCATION_FILE, StageContext, working_copy
from tampkit.store.artifacts import write_json
from tampkit.store.block_store import BlockStore

BLOCKS_FILE = "blocks.json"


def read_plan(layout: Layout) -> Plan:
    return Plan(**json.loads((layout.allocation / ALLOCATION_FILE).read_text())["plan"])


def run(ctx: StageContext) -> dict[str, Any]:
    """Every block scored and masked in order, one file each; which were read back or computed."""
    p = ctx.params
    bundle = working_copy(p)
    method = make_scorer(p.pair().scorer, p.amia_params(), p.method_label())
    method.example_sample = example_sample(ctx.layout)
    store = BlockStore(ctx.out, ctx.fingerprint, "masks")
    blocks = len(bundle.adapter.decoder_layers(bundle.model)[1])
    store.remove_beyond(blocks)
    counts = read_plan(ctx.layout).counts
    stats_fingerprint = ctx.upstream.get("allocate", {}).get("upstream", {}).get("stats")
    scalers = stored_scalers(p, ctx.layout, stats_fingerprint, blocks)
    if scalers is not None:  # one pass: the stats stage measured the scalers on the same dense inputs
        result = prune_from_scalers(bundle, scalers, counts, p.structure(), ctx.device, ctx.progress, store,
                                    keep_masks=False)
    else:
        encoded = ctx.encoded() if method.needs_calibration else []
        result = prune_blocks(bundle, encoded, method, counts, p.structure(), ctx.device,
                              p.prune.propagation, ctx.progress, store, keep_masks=False)
    write_json(ctx.out / BLOCKS_FILE, result.blocks)
    return {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed),
            "from_stored_scalers": scalers is not None}
