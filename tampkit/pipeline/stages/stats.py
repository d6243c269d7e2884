"""Stage stats: the dense statistics pass, one file per block (resumable); independent of method and sparsity."""

from __future__ import annotations

from typing import Any

from tampkit.engine.dense_stats import dense_pass
from tampkit.pipeline.stages.context import StageContext, pristine_model
from tampkit.store.block_store import BlockStore


def run(ctx: StageContext) -> dict[str, Any]:
    """Every block's dense statistics on disk; which blocks were read back or computed."""
    bundle = pristine_model(ctx.params)
    store = BlockStore(ctx.out, ctx.fingerprint, "stats")
    store.remove_beyond(len(bundle.adapter.decoder_layers(bundle.model)[1]))
    dense_pass(bundle, ctx.encoded(), ctx.device, ctx.params.stats.intra == "positive", True, ctx.progress, store)
    return {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}
