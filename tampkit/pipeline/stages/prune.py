"""Stage prune: apply the stored masks to a fresh model; save the checkpoint (+ processor and
bit-packed masks), the report, the per-layer CSV and the plots. With `prune.save_format: compressed`
the saved pruned decoder Linears are then rewritten as sparse bitmasks (tampkit/models/compressed.py);
the report counts the zeros from the files as finally written either way.

With `model.offload: disk` the model is a skeleton (tampkit/models/offload.py): each block is read
from the source checkpoint, pruned and written to its own shard, then released, so the stage never
holds more than one block's weights; the saved folder loads to the same weights as the in-memory one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from tampkit import __version__
from tampkit.calibration.sources import load_calibration
from tampkit.core.errors import UsageError
from tampkit.core.masks import unpack_mask
from tampkit.engine.masking import PruneResult, apply_stored_blocks
from tampkit.engine.plan import Plan
from tampkit.methods.base import apply_mask
from tampkit.models.adapters import ModelBundle, find_linears
from tampkit.models.compressed import compress_folder
from tampkit.models.offload import DiskOffload, OffloadWriter, SafetensorsWriter, Spec
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
    saved_weight_keys,
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


def save_pruned(bundle: ModelBundle, folder: Path, result: PruneResult, plan: Plan, header: dict[str, Any],
                save_format: str = "dense", structure: str = "unstructured") -> dict[str, Any]:
    """Write the pruned checkpoint (+ processor and bit-packed masks) into `folder`; return the
    report: `header`, then the allocation and per matrix/block what was planned and achieved
    (zeros counted from the saved weights, never assumed). `save_format="compressed"` stores the
    pruned decoder Linears as sparse bitmasks (`compress_pruned`)."""
    bundle.model.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    save_masks(folder / MASKS_FILE, result.masks)
    if save_format == "compressed":
        header = {**header, "compression": compress_pruned(bundle, folder, result, structure)}
    return pruned_report(bundle, folder, result, plan, header)


def compress_pruned(bundle: ModelBundle, folder: Path, result: PruneResult, structure: str) -> dict[str, Any]:
    """The saved dense checkpoint in `folder` rewritten with its pruned decoder Linears compressed
    (tampkit/models/compressed.py); what the report records of it: the format and the bytes on disk."""
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    keys = saved_weight_keys(folder, list(result.masks), prefix)
    dense_bytes = checkpoint_bytes(folder)
    config = compress_folder(folder, keys.values(), structure)
    return {"format": config["format"], "sparsity_structure": config["sparsity_structure"],
            "dense_bytes": dense_bytes, "compressed_bytes": checkpoint_bytes(folder)}


def checkpoint_bytes(folder: Path) -> int:
    """Bytes of a checkpoint's weight files (the bit-packed masks file aside)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors") if f.name != MASKS_FILE)


def pruned_report(bundle: ModelBundle, folder: Path, result: PruneResult, plan: Plan, header: dict[str, Any]) -> dict[str, Any]:
    """The report of a saved pruned checkpoint (see `save_pruned`)."""
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    saved = count_saved_zeros(folder, list(result.masks), prefix)
    return {
        **header,
        "achieved_sparsity": global_sparsity(saved),
        "allocation": plan.allocation,
        "matrices": matrix_rows(result.planned, saved, result.masks, plan),
        "blocks": block_rows(result.blocks, plan),
    }


def _apply_block(block: torch.nn.Module, tensors: dict[str, torch.Tensor], record: dict) -> None:
    """A masks-stage block file put into the block (new weights first, then zeros), as
    tampkit.engine.masking.apply_stored_blocks does for a model in memory."""
    linears = find_linears(block)
    for name, shape in record["shapes"].items():
        if f"weight.{name}" in tensors:
            linears[name].weight.copy_(tensors[f"weight.{name}"])
        apply_mask(linears[name], unpack_mask(tensors[f"mask.{name}"].numpy(), tuple(shape)))


@torch.no_grad()
def save_pruned_offloaded(bundle: ModelBundle, store: BlockStore, folder: Path) -> PruneResult:
    """The pruned checkpoint of an offloaded model written block by block into `folder` (each
    block read from disk, its stored masks applied, written to its shard, released), then the
    rest of the model, the index, the configs, the processor and the bit-packed masks (streamed
    too). The result's masks are shape-only (meta) tensors: the masks themselves are on disk."""
    residency = bundle.residency
    assert isinstance(residency, DiskOffload)
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    names = {f"{prefix}.{i}.{name}": tuple(linear.weight.shape)
             for i, block in enumerate(layers) for name, linear in find_linears(block).items()}
    masks_file = SafetensorsWriter(folder / MASKS_FILE, [Spec(n, torch.uint8, (math.ceil(math.prod(s) / 8),))
                                                           for n, s in names.items()],
                                   {"shapes": json.dumps({n: list(s) for n, s in names.items()}), "true_means": "pruned"})
    writer = OffloadWriter(bundle.model, residency, folder)
    result = PruneResult()
    try:
        for index, block in enumerate(layers):
            stored = store.load(index)
            if stored is None:
                raise UsageError("masks", f"block {index} has no valid file in {store.folder}", "rerun the masks stage")
            tensors, record = stored
            head = f"{prefix}.{index}."
            mine = [n for n in names if n.startswith(head)]
            if {head + n: tuple(s) for n, s in record["shapes"].items()} != {n: names[n] for n in mine}:
                raise UsageError("masks", f"block {index}'s file masks other matrices than the model has",
                                 "rerun the masks stage")
            with residency.block_on(index, block, torch.device("cpu")):
                _apply_block(block, tensors, record)
                writer.write_block(index, block)
            for full in mine:  # in the masks file's order
                name = full[len(head):]
                masks_file.write(full, tensors[f"mask.{name}"])
                result.masks[full] = torch.empty(names[full], dtype=torch.bool, device="meta")
                result.planned[full] = record["planned"][name]
            result.blocks.append(record["summary"])
            del tensors, stored
    except BaseException:
        masks_file.abort()
        raise
    masks_file.close()
    writer.finish()
    bundle.processor.save_pretrained(folder)
    return result


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
    store = BlockStore(ctx.layout.masks, ctx.upstream["masks"]["fingerprint"], "masks")
    offload = isinstance(bundle.residency, DiskOffload)
    result = save_pruned_offloaded(bundle, store, ctx.out) if offload else apply_stored_blocks(bundle, store)
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
        "offload": p.model.offload,
        "method_params": p.method_settings(), "params_hash": result_params_hash(p),
        "dense_stats": None if stats is None else {"fingerprint": stats["fingerprint"]},
    }
    header["save_format"] = p.prune.save_format
    if offload:
        if p.prune.save_format == "compressed":
            header["compression"] = compress_pruned(bundle, ctx.out, result, p.prune.structure)
        report = pruned_report(bundle, ctx.out, result, plan, header)
    else:
        report = save_pruned(bundle, ctx.out, result, plan, header, p.prune.save_format, p.prune.structure)
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
