"""Calibration from generated scenes (`--calibration scenes`): validation-split scenes, each one
conversation of all its questions and its caption, as the organism was trained on (the training
split is never reused, the test split is never seen). Registered as the calibration source `scenes`
(entry point group `tampkit.calibration`, see `tampkit.calibration.sources`)."""

from __future__ import annotations

from tampkit.calibration.sources import select_samples
from tampkit.core.types import Sample

#: Validation scenes in the pool `select_samples` draws from.
POOL_SCENES = 512


def scene_samples(scenes: int = POOL_SCENES) -> list[Sample]:
    from tampkit.organism.model import CAPTION_PROMPT
    from tampkit.organism.questions import scene_questions
    from tampkit.organism.scenes import make_scene

    samples = []
    for index in range(scenes):
        scene = make_scene("validation", index)
        turns: list[tuple[str, str]] = []
        for k, q in enumerate(scene_questions(scene)):
            turns += [("user", ("<image>\n" if k == 0 else "") + q.question), ("assistant", q.answer)]
        turns += [("user", CAPTION_PROMPT), ("assistant", scene.caption())]
        samples.append(Sample(scene.id, turns, scene.image(), source="scenes"))
    return samples


def scene_calibration(nsamples: int, seed: int) -> list[Sample]:
    """The `scenes` calibration source: `nsamples` of the pool's scenes drawn with `seed`."""
    return select_samples(scene_samples(), nsamples, seed)
