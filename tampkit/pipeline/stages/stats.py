"""Stage stats: the dense statistics pass, one file per block (resumable); independent of method and sparsity.

Under dense propagation with the AMIA-Wanda scorer and a DAS/OWL allocation, the same forward also
measures AMIA-Wanda's scalers for the masks stage (`tampkit.pipeline.one_pass`), in their own files
with their own fingerprint; the dense statistics are the same bits either way.
"""

from __future__ import annotations

from typing import Any

from tampkit.engine.dense_stats import dense_pass
from tampkit.pipeline import one_pass
from tampkit.pipeline.stages.context import StageContext, pristine_model
from tampkit.store.block_store import BlockStore


def run(ctx: StageContext) -> dict[str, Any]:
    """Every block's dense statistics on disk; which blocks were read back or computed."""
    bundle = pristine_model(ctx.params)
    blocks = len(bundle.adapter.decoder_layers(bundle.model)[1])
    store = BlockStore(ctx.out, ctx.fingerprint, "stats")
    store.remove_beyond(blocks)
    selection = one_pass.selection_scorer(ctx.params)
    selected = None
    if selection is not None:
        selection.example_sample = one_pass.example_sample(ctx.layout)
        fingerprint = one_pass.selection_fingerprint(ctx.fingerprint, ctx.params, selection.example_sample)
        selected = one_pass.selection_store(ctx.out, fingerprint)
        selected.remove_beyond(blocks)
    dense_pass(bundle, ctx.encoded(), ctx.device, ctx.params.stats.intra == "positive", True, ctx.progress, store,
               selection, selected)
    record: dict[str, Any] = {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}
    if selected is not None:
        record["selection"] = {"scorer": "amia-wanda", "fingerprint": selected.fingerprint,
                               "blocks_computed": len(selected.computed)}
    return record
