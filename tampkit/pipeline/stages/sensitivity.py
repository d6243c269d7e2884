"""Stage sensitivity: ECoFLaP's zeroth-order score of every decoder block, one file per block
(resumable); independent of the scorer and the sparsity, so a sweep pays for it once."""

from __future__ import annotations

from typing import Any

from tampkit.engine.block_sensitivity import ecoflap_scores
from tampkit.pipeline.stages.context import StageContext, pristine_model
from tampkit.store.block_store import BlockStore


def run(ctx: StageContext) -> dict[str, Any]:
    """Every block's score on disk; the scores, and which blocks were read back or computed."""
    bundle = pristine_model(ctx.params)
    store = BlockStore(ctx.out, ctx.fingerprint, "sensitivity")
    store.remove_beyond(len(bundle.adapter.decoder_layers(bundle.model)[1]))
    a = ctx.params.allocation
    scores = ecoflap_scores(bundle, ctx.encoded(), ctx.device, a.zo_eps, a.zo_seed, ctx.progress, store)
    return {"block_scores": scores, "blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}
