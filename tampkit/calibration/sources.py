"""--calibration values and deterministic selection of --nsamples samples with --seed."""

from __future__ import annotations

import random
from pathlib import Path

from tampkit.calibration.av_builtin import builtin_av_samples
from tampkit.calibration.avinstruct import load_avinstruct
from tampkit.calibration.builtin import builtin_image_samples, builtin_samples, builtin_text_samples
from tampkit.calibration.jsonl import load_jsonl_folder
from tampkit.calibration.scenes import scene_samples
from tampkit.calibration.sharegpt4v import load_sharegpt4v
from tampkit.core.errors import UsageError
from tampkit.models.adapters import Sample

CALIBRATION_SOURCES = ("builtin", "builtin-images", "builtin-text", "builtin-av", "scenes", "sharegpt4v[:PATH]",
                       "avinstruct:PATH", "a folder of *.jsonl")


def select_samples(pool: list[Sample], nsamples: int, seed: int) -> list[Sample]:
    """`nsamples` distinct samples drawn with `seed`; the same arguments give the same list."""
    if nsamples < 1:
        raise UsageError("--nsamples", f"must be at least 1, got {nsamples}")
    if nsamples > len(pool):
        raise UsageError("--nsamples", f"{nsamples} requested but the source has {len(pool)} samples", f"1..{len(pool)}")
    return random.Random(seed).sample(pool, nsamples)


def load_calibration(source: str, nsamples: int, seed: int) -> list[Sample]:
    """Resolve a --calibration value to the selected samples."""
    if source.startswith("sharegpt4v"):
        location = source.partition(":")[2] or None
        return load_sharegpt4v(location, nsamples, seed)
    if source.startswith("avinstruct:"):
        return select_samples(load_avinstruct(source.partition(":")[2]), nsamples, seed)
    builtins = {"builtin": builtin_samples, "builtin-images": builtin_image_samples, "builtin-text": builtin_text_samples,
                "builtin-av": builtin_av_samples, "scenes": scene_samples}
    if source in builtins:
        return select_samples(builtins[source](), nsamples, seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return select_samples(load_jsonl_folder(path), nsamples, seed)
    raise UsageError("--calibration", f"'{source}' is neither a known source nor a folder", CALIBRATION_SOURCES)
