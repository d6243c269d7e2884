"""Stage prune: apply the stored masks to a fresh model; save the checkpoint (+ processor and
bit-packed masks), the report, the per-layer CSV and the plots."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from tampkit import __version__
from tampkit.calibration.sources import load_calibration
from tampkit.engine.masking import PruneResult, apply_stored_blocks
from tampkit.engine.plan import Plan
from tampkit.models.adapters import ModelBundle
from tampkit.pipeline.params import Params
from tampkit.pipeline.stages.context import StageContext, working_copy, write_csv
from tampkit.pipeline.stages.masks import example_sample, read_plan
from tampkit.pipeline.table import ancestors
from tampkit.reporting.plots import write_plots
from tampkit.reporting.report import (
    block_rows,
    count_saved_zeros,
    cuda_peak_bytes,
    global_sparsity,
    layer_rows,
    matrix_rows,
    peak_rss_bytes,
)
from tampkit.store.artifacts import MASKS_FILE, REPORT_FILE, atomic_directory, save_masks, write_json
from tampkit.store.block_store import BlockStore
from tampkit.store.records import read_record

LAYERS_CSV = "layers.csv"


def amia_example(bundle: ModelBundle, ctx: StageContext, blocks: list[dict]) -> dict[str, Any] | None:
    """The first calibration image's AMIA picks in the middle block, for the report and its picture."""
    with_picks = [i for i, b in enumerate(blocks) if b.get("amia_example")]
    index = example_sample(ctx.layout)
    if not with_picks or index is None:  # video/audio-only calibration: the per-modality counts are in the report
        return None
    cal = ctx.params.calibration
    sample = load_calibration(ctx.upstream["calibrate"]["source"], cal.nsamples, cal.seed)[index]
    block = with_picks[len(with_picks) // 2]
    vision = getattr(bundle.model.config, "vision_config", None)
    base_side = (vision.image_size // vision.patch_size
                 if vision is not None and hasattr(vision, "patch_size") and hasattr(vision, "image_size") else None)
    labels = bundle.adapter.modality_labels(bundle.model, ctx.encoded()[index]["input_ids"]).tolist()
    return {"sample": sample.id, "block": block, "picks": blocks[block]["amia_example"],
            "image": sample.image.convert("RGB"), "labels": labels, "base_side": base_side}


def save_pruned(bundle: ModelBundle, folder: Path, result: PruneResult, plan: Plan, header: dict[str, Any]) -> dict[str, Any]:
    """Write the pruned checkpoint (+ processor and bit-packed masks) into `folder`; return the
    report: `header`, then the allocation and per matrix/block what was planned and achieved
    (zeros counted from the saved weights, never assumed)."""
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    bundle.model.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    save_masks(folder / MASKS_FILE, result.masks)
    saved = count_saved_zeros(folder, list(result.masks), prefix)
    return {
        **header,
        "achieved_sparsity": global_sparsity(saved),
        "allocation": plan.allocation,
        "matrices": matrix_rows(result.planned, saved, result.masks, plan),
        "blocks": block_rows(result.blocks, plan),
    }


def result_params_hash(params: Params) -> str:
    """Hash of the params this checkpoint depends on (those its stage and the stages before it read);
    the evaluation knobs, say, do not move it."""
    views = {stage: params.stage_view(stage) for stage in (*ancestors("prune"), "prune")}
    return hashlib.sha256(json.dumps(views, sort_keys=True).encode()).hexdigest()


def _seconds(ctx: StageContext, own: float) -> dict[str, float]:
    """Seconds per stage of the result: the upstream stages' records (when they ran), then this one."""
    seconds = {}
    for stage in ancestors("prune"):
        record = ctx.upstream.get(stage) or read_record(ctx.layout.folder(stage))
        if record is not None and ctx.params.needs(stage):
            seconds[stage] = float(record.get("seconds", 0.0))
    return {**seconds, "prune": own}


def run(ctx: StageContext) -> dict[str, Any]:
    """Masks applied, checkpoint saved and counted, report and plots written; the achieved sparsity."""
    start = time.perf_counter()
    p = ctx.params
    bundle = working_copy(p)
    result = apply_stored_blocks(bundle, BlockStore(ctx.layout.masks, ctx.upstream["masks"]["fingerprint"], "masks"))
    plan = read_plan(ctx.layout)
    calibration = ctx.upstream["calibrate"]
    calibrated = p.pair().calibrated
    stats = read_record(ctx.layout.stats) if p.needs_dense_stats() else None
    header = {
        "tampkit_version": __version__, "model": p.model.name, "family": bundle.adapter.family,
        "method": p.method_label(), "scorer": p.pair().scorer, "structure": str(p.structure()), "target_sparsity": p.prune.sparsity,
        "calibration": calibration["source"] if calibrated else None,
        "nsamples": calibration["samples"] if calibrated else 0,
        **{key: calibration[key] if calibrated else 0 for key in ("image_samples", "video_samples", "audio_samples")},
        "calibration_tokens": calibration["tokens"] if calibrated else 0,
        "seed": p.calibration.seed, "propagation": p.prune.propagation, "device": str(ctx.device),
        "method_params": p.method_settings(), "params_hash": result_params_hash(p),
        "dense_stats": None if stats is None else {"fingerprint": stats["fingerprint"]},
    }
    report = save_pruned(bundle, ctx.out, result, plan, header)
    with atomic_directory(ctx.layout.reports, overwrite=True) as reports:
        example = amia_example(bundle, ctx, result.blocks)
        if example is not None:
            report["amia_example"] = {k: example[k] for k in ("sample", "block", "picks")}
        report["plots"] = write_plots(report, reports, example) if p.report.plots else []
        report["seconds"] = _seconds(ctx, time.perf_counter() - start)
        report["peak_rss_bytes"] = peak_rss_bytes()  # of the process that ran this stage
        if (cuda := cuda_peak_bytes()) is not None:
            report["cuda_peak_bytes"] = cuda
        write_json(reports / REPORT_FILE, report)
        write_csv(reports / LAYERS_CSV, layer_rows(report["matrices"]))
    return {"achieved_sparsity": report["achieved_sparsity"]}
