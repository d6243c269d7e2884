"""`tamp prune`: load, calibrate, prune block by block, save checkpoint + masks + report."""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tampkit import __version__
from tampkit.store.artifacts import MASKS_FILE, REPORT_FILE, atomic_directory, save_masks, write_json
from tampkit.calibration import load_calibration
from tampkit.pipeline.config import PruneConfig
from tampkit.engine.dense_stats import dense_stats
from tampkit.engine.masking import PruneResult, prune_blocks
from tampkit.evaluation import perplexity
from tampkit.methods import METHODS, make_method
from tampkit.methods.amia_wanda import AmiaWanda
from tampkit.models import load_model
from tampkit.engine.plan import Plan, plan_counts
from tampkit.reporting.plots import write_plots
from tampkit.reporting.report import (block_rows, count_saved_zeros, cuda_peak_bytes, global_sparsity, matrix_rows,
                                     peak_rss_bytes)


class PhaseTimer:
    """Wall seconds per named phase, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def amia_example(bundle: Any, samples: list, encoded: list, blocks: list[dict]) -> dict[str, Any] | None:
    """The first calibration image's AMIA picks in the middle block, for the report and its picture."""
    with_picks = [i for i, b in enumerate(blocks) if b.get("amia_example")]
    if not with_picks:
        return None
    index = next((i for i, s in enumerate(samples) if s.image is not None), None)
    if index is None:  # video/audio-only calibration: the per-modality counts are in the report
        return None
    block = with_picks[len(with_picks) // 2]
    vision = getattr(bundle.model.config, "vision_config", None)
    base_side = vision.image_size // vision.patch_size if vision is not None and hasattr(vision, "patch_size") and hasattr(vision, "image_size") else None
    labels = bundle.adapter.modality_labels(bundle.model, encoded[index]["input_ids"]).tolist()
    return {"sample": samples[index].id, "block": block, "picks": blocks[block]["amia_example"],
            "image": samples[index].image.convert("RGB"), "labels": labels, "base_side": base_side}


def save_pruned(bundle: Any, folder: Path, result: PruneResult, plan: Plan, header: dict[str, Any]) -> dict[str, Any]:
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


def run_prune(config: PruneConfig, progress: bool = True) -> dict[str, Any]:
    """The whole command; returns the report (also written to OUT/tamp_report.json)."""
    structure = config.validate()
    device = config.compute_device()
    timer = PhaseTimer()
    allocation = METHODS[config.method].allocation
    needs_stats = allocation != "uniform" and not structure.is_nm
    with timer.phase("load"):
        bundle = load_model(config.model, config.dtype)
        method = make_method(config.method, config.params)
    with timer.phase("calibrate"):
        source = config.calibration or bundle.adapter.default_calibration
        samples = load_calibration(source, config.nsamples, config.seed) if method.needs_calibration else []
        encoded = [bundle.adapter.encode(bundle, s) for s in tqdm(samples, desc="encode", disable=not progress, leave=False)]
    if isinstance(method, AmiaWanda):
        method.example_sample = next((i for i, s in enumerate(samples) if s.image is not None), None)
    stats, stats_cached = None, False
    if needs_stats:
        with timer.phase("dense_stats"):
            stats, stats_cached = dense_stats(bundle, encoded, device, config.params.positive_only,
                                              with_terms=allocation == "das", cache_dir=config.stats_cache,
                                              progress=progress)
    with timer.phase("allocate"):
        plan = plan_counts(bundle, allocation, config.sparsity, structure, config.params, stats)
    with timer.phase("prune"):
        result = prune_blocks(bundle, encoded, method, plan.counts, structure, device, config.propagation, progress)
    with atomic_directory(config.out, config.overwrite) as tmp:
        with timer.phase("save"):
            header = {
                "tampkit_version": __version__,
                "model": config.model,
                "family": bundle.adapter.family,
                "method": config.method,
                "structure": str(structure),
                "target_sparsity": config.sparsity,
                "calibration": source if samples else None,
                "nsamples": len(samples),
                "image_samples": sum(s.image is not None for s in samples),
                "video_samples": sum(s.video is not None for s in samples),
                "audio_samples": sum(s.audio is not None for s in samples),
                "calibration_tokens": sum(int(e["input_ids"].shape[1]) for e in encoded),
                "seed": config.seed,
                "propagation": config.propagation,
                "device": str(device),
                "method_params": config.params.to_dict(),
                "dense_stats": None if stats is None else {"fingerprint": stats.fingerprint, "cached": stats_cached},
            }
            report = save_pruned(bundle, tmp, result, plan, header)
        example = amia_example(bundle, samples, encoded, result.blocks)
        if example is not None:
            report["amia_example"] = {k: example[k] for k in ("sample", "block", "picks")}
        if config.plots:
            report["plots"] = write_plots(report, tmp, example)
        if config.eval_ppl:
            with timer.phase("evaluate"):
                report["heldout_perplexity"] = perplexity(bundle, device=device)
        report["seconds"] = dict(timer.seconds)
        report["peak_rss_bytes"] = peak_rss_bytes()
        if (cuda := cuda_peak_bytes()) is not None:
            report["cuda_peak_bytes"] = cuda
        write_json(tmp / REPORT_FILE, report)
    return report
