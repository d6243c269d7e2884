"""The built-in offline set: scikit-image's public-domain photos with captions and questions
written for this project, text-only conversations, and held-out prose for perplexity.

Nothing here downloads: skimage.data bundles these photos inside the wheel.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image

from tampkit.core.types import Sample

_DATA = resources.files("tampkit.calibration") / "data"
_CAPTION_PROMPTS = (
    "Describe this image.",
    "What do you see in this picture?",
    "Write a one-sentence caption for the image.",
    "Give a short description of the photo.",
)


def _to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:  # bool masks and float phantoms: stretch to 0..255
        values = array.astype(np.float64)
        values = 255 * (values - values.min()) / max(float(values.max() - values.min()), 1e-9)
        array = values.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return Image.fromarray(array).convert("RGB")


@lru_cache(maxsize=None)
def builtin_image(name: str) -> Image.Image:
    """One skimage.data photo as an RGB PIL image.

    Some are drawn at random (binary_blobs): those get a fixed seed, or every process would
    calibrate on another picture (the same params and seed must give the same inputs)."""
    import inspect

    from skimage import data as skdata

    make = getattr(skdata, name)
    seeded = {"rng": 0} if "rng" in inspect.signature(make).parameters else {}
    return _to_pil(make(**seeded))


def image_texts() -> dict[str, dict]:
    records = json.loads((_DATA / "images.json").read_text())
    records.pop("_about", None)
    return records


def builtin_image_samples() -> list[Sample]:
    """Per photo: a caption sample, one sample per question, and one multi-turn conversation."""
    samples: list[Sample] = []
    for index, (name, record) in enumerate(sorted(image_texts().items())):
        image = builtin_image(name)
        prompt = _CAPTION_PROMPTS[index % len(_CAPTION_PROMPTS)]
        samples.append(Sample(f"{name}/caption", [("user", f"<image>\n{prompt}"), ("assistant", record["caption"])], image))
        for k, (question, answer) in enumerate(record["qa"]):
            samples.append(Sample(f"{name}/qa{k}", [("user", f"<image>\n{question}"), ("assistant", answer)], image))
        turns: list[tuple[str, str]] = [("user", f"<image>\n{prompt}"), ("assistant", record["caption"])]
        for question, answer in record["qa"]:
            turns += [("user", question), ("assistant", answer)]
        samples.append(Sample(f"{name}/chat", turns, image))
    return samples


def builtin_text_samples() -> list[Sample]:
    """Text-only conversations (no image), so calibration also sees pure-text inputs."""
    pairs = json.loads((_DATA / "text_conversations.json").read_text())
    return [Sample(f"text/{i:02d}", [("user", q), ("assistant", a)]) for i, (q, a) in enumerate(pairs)]


def builtin_samples() -> list[Sample]:
    return builtin_image_samples() + builtin_text_samples()


def heldout_paragraphs() -> list[str]:
    """Prose written for evaluation only: never part of any calibration sample."""
    text = (_DATA / "heldout.txt").read_text()
    return [p.strip() for p in text.split("\n\n") if p.strip()]
