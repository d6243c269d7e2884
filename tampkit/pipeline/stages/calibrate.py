"""Stage calibrate: sample the calibration set, tokenise it for the model, label every token's modality."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit.calibration.sources import load_calibration
from tampkit.core.types import MODALITIES
from tampkit.pipeline.stages.context import INPUTS_FILE, MANIFEST_FILE, StageContext, pristine_model
from tampkit.store.artifacts import write_json
from tampkit.store.records import save_encoded


def resolved_source(source: str, bundle: Any) -> str:
    """`auto` is the model family's default calibration (builtin; builtin-av for audio-video models)."""
    return bundle.adapter.default_calibration if source == "auto" else source


def run(ctx: StageContext) -> dict[str, Any]:
    """Samples drawn, tokenised and labelled; the counts and the resolved source."""
    cal = ctx.params.calibration
    bundle = pristine_model(ctx.params)
    source = resolved_source(cal.source, bundle)
    samples = load_calibration(source, cal.nsamples, cal.seed)
    encoded = [bundle.adapter.encode(bundle, s) for s in tqdm(samples, desc="encode", disable=not ctx.progress)]
    labels = [bundle.adapter.modality_labels(bundle.model, e["input_ids"]) for e in encoded]
    save_encoded(ctx.out / INPUTS_FILE, encoded, labels)
    rows = [{"id": s.id, "image": s.image is not None, "media": s.media(), "tokens": int(lab.numel()),
             "modalities": {MODALITIES[int(m)]: int((lab == m).sum()) for m in torch.unique(lab)}}
            for s, lab in zip(samples, labels)]
    write_json(ctx.out / MANIFEST_FILE, {"source": source, "nsamples": cal.nsamples, "seed": cal.seed,
                                         "samples": rows})
    return {"source": source, "samples": len(rows), "image_samples": sum(r["image"] for r in rows),
            "video_samples": sum(s.video is not None for s in samples),
            "audio_samples": sum(s.audio is not None for s in samples),
            "tokens": sum(r["tokens"] for r in rows)}
