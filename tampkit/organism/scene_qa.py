"""Accuracy on generated scene questions (the organism's test split), per question type.

Each question is asked alone, image first, as `Adapter.encode(..., generation_prompt=True)` renders
it; the greedy answer (up to `max_new_tokens`, stopping at end of turn) must equal the reference
after `normalize_answer`. Prompts of equal token length are batched without padding, so a batch
gives exactly what one-by-one decoding gives.

`image="blank"` replaces every image with a plain grey one and `image="other"` with the next
question's scene: a model that really looks falls to the blind baselines (`organism.blind`) with
another scene's image. With a blank one it may not even end its turn (no training image is empty).

`SCENE_QA_SUITE` is the evaluation suite `scene_qa` (entry point group `tampkit.suites`, see
`tampkit.evaluation.suites`): what the evaluate stage's `evaluate.scene_qa` runs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from PIL import Image

from tampkit.core.types import Sample
from tampkit.engine.runner import to_device
from tampkit.evaluation.qa import normalize_answer
from tampkit.evaluation.suites import Suite
from tampkit.models.adapters import ModelBundle
from tampkit.organism.blind import REFERENCE_PREFIXES, reference_metrics
from tampkit.organism.questions import POPE_SETTINGS, QUESTION_TYPES, SceneQuestion, split_questions
from tampkit.organism.scenes import IMAGE

IMAGE_MODES = ("scene", "blank", "other")
#: Scenes of the test split the organism's card and the pipeline suite evaluate.
TEST_SCENES = 300


def test_questions(scenes: int = TEST_SCENES) -> list[SceneQuestion]:
    return split_questions("test", scenes)


def question_sample(question: SceneQuestion, image: Image.Image | None = None, answer: bool = False) -> Sample:
    turns = [("user", f"<image>\n{question.question}")] + ([("assistant", question.answer)] if answer else [])
    return Sample(question.id, turns, image if image is not None else question.scene.image(), source="scenes")


def _images(questions: list[SceneQuestion], mode: str) -> list[Image.Image]:
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
    if mode == "blank":
        blank = Image.new("RGB", (IMAGE, IMAGE), (210, 210, 210))
        return [blank] * len(questions)
    scenes = [q.scene for q in questions]
    if mode == "other":  # the next question about a different scene, cyclically
        ids = [s.id for s in scenes]
        shifted = []
        for i, scene in enumerate(scenes):
            j = next((k % len(scenes) for k in range(i + 1, i + 1 + len(scenes)) if ids[k % len(scenes)] != scene.id), i)
            shifted.append(scenes[j])
        scenes = shifted
    return [s.image() for s in scenes]


@torch.no_grad()
def _greedy(bundle: ModelBundle, batch: dict[str, torch.Tensor], max_new_tokens: int,
            device: torch.device | str) -> list[list[int]]:
    """Greedy continuation of every row, stopping at end of turn (no cache: answers are short)."""
    eos = bundle.tokenizer.eos_token_id
    inputs = to_device(dict(batch), device)
    out: list[list[int]] = [[] for _ in range(inputs["input_ids"].shape[0])]
    done = torch.zeros(len(out), dtype=torch.bool)
    for _ in range(max_new_tokens):
        step = bundle.model(**inputs, use_cache=False).logits[:, -1].argmax(-1).cpu()
        for row, token in enumerate(step.tolist()):
            if not done[row]:
                if token == eos:
                    done[row] = True
                else:
                    out[row].append(token)
        if bool(done.all()):
            break
        inputs["input_ids"] = torch.cat([inputs["input_ids"], step[:, None].to(inputs["input_ids"].device)], 1)
        if "attention_mask" in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return out


def scene_qa(bundle: ModelBundle, questions: list[SceneQuestion] | None = None, image: str = "scene",
             max_new_tokens: int = 3, batch_size: int = 64, device: torch.device | str = "cpu",
             progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({"scene_accuracy", "scene_accuracy_<type>", "scene_accuracy_presence_<setting>"}, logs)."""
    from tqdm.auto import tqdm

    questions = questions if questions is not None else test_questions()
    images = _images(questions, image)
    encoded = [bundle.adapter.encode(bundle, question_sample(q, img), generation_prompt=True)
               for q, img in zip(questions, images)]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(encoded):
        groups[e["input_ids"].shape[1]].append(i)
    predictions: dict[int, str] = {}
    original = next(bundle.model.parameters()).device
    bundle.model.to(device)
    try:
        chunks = [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
        for chunk in tqdm(chunks, desc=f"scene qa ({image})", disable=not progress):
            batch = {key: torch.cat([encoded[i][key] for i in chunk]) for key in encoded[chunk[0]]}
            for i, tokens in zip(chunk, _greedy(bundle, batch, max_new_tokens, device)):
                predictions[i] = bundle.tokenizer.decode(tokens, skip_special_tokens=True)
    finally:
        bundle.model.to(original)
    logs = [{"id": q.id, "type": q.kind, "setting": q.setting, "question": q.question, "answer": q.answer,
             "prediction": predictions[i], "correct": normalize_answer(predictions[i]) == q.answer}
            for i, q in enumerate(questions)]
    return accuracy_by_type(logs), logs


def accuracy_by_type(logs: list[dict[str, Any]]) -> dict[str, float]:
    def mean(rows: list[dict[str, Any]]) -> float:
        return sum(r["correct"] for r in rows) / len(rows)

    metrics = {"scene_accuracy": mean(logs)} if logs else {}
    for kind in QUESTION_TYPES:
        rows = [r for r in logs if r["type"] == kind]
        if rows:
            metrics[f"scene_accuracy_{kind}"] = mean(rows)
    for setting in POPE_SETTINGS:
        rows = [r for r in logs if r["type"] == "presence" and r["setting"] == setting]
        if rows:
            metrics[f"scene_accuracy_presence_{setting}"] = mean(rows)
    return metrics


def scene_agreement_inputs(bundle: ModelBundle, limit: int = 0, scenes: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The scene test questions with their answers: the questions `scene_qa` scores (the first
    `TEST_SCENES` test scenes unless `scenes` says otherwise), or their first `limit`."""
    questions = test_questions(TEST_SCENES if scenes is None else scenes)
    questions = questions[:limit] if limit else questions
    return [bundle.adapter.encode(bundle, question_sample(q, answer=True)) for q in questions]


def score_scene_qa(bundle: ModelBundle, limit: int = 0, device: torch.device | str = "cpu",
                   progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The suite's scores on the test questions (their first `limit`): `scene_qa`'s accuracies, then
    what a blind model and uniform guessing get on the same questions (`blind.reference_metrics`)."""
    questions = test_questions()
    questions = questions[:limit] if limit else questions
    values, logs = scene_qa(bundle, questions, device=device, progress=progress)
    return values | reference_metrics(questions), logs


SCENE_QA_SUITE = Suite(score=score_scene_qa, agreement_inputs=scene_agreement_inputs,
                       reference_prefixes=REFERENCE_PREFIXES)
