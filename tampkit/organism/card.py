"""The organism's model card: does it really see? Accuracy on the test split with its scenes, with a
blank image and with another scene's image, per question type, beside what blind predictors fitted on
the training stream score on the same questions (`tampkit.organism.blind`), uniform chance and
training facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tampkit.organism.scene_qa import scene_qa, test_questions
from tampkit.models.adapters import ModelBundle
from tampkit.organism.blind import BASELINES, BLIND_FIT_SCENES, blind_baselines
from tampkit.organism.model import IMAGE_TOKENS, OrganismSpec
from tampkit.organism.store import CARD_JSON
from tampkit.organism.questions import CHANCE, POPE_SETTINGS, QUESTION_TYPES

CARD_MD = "model_card.md"


def measure_card(bundle: ModelBundle, spec: OrganismSpec, log: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    questions = test_questions(spec.test_scenes)
    accuracy = {mode: scene_qa(bundle, questions, image=mode, progress=progress)[0] for mode in ("scene", "blank", "other")}
    counts = {kind: sum(q.kind == kind for q in questions) for kind in QUESTION_TYPES}
    chance = sum(CHANCE[k] * n for k, n in counts.items()) / len(questions)
    counts |= {f"presence ({s})": sum(q.kind == "presence" and q.setting == s for q in questions) for s in POPE_SETTINGS}
    decoder = sum(p.numel() for n, p in bundle.model.named_parameters() if ".layers." in n and "vision" not in n)
    return {"name": spec.name, "spec": spec.to_dict(), "image_tokens": IMAGE_TOKENS, "decoder_weights": decoder,
            "test_scenes": spec.test_scenes, "test_questions": len(questions), "questions_per_type": counts,
            "chance": {"overall": chance, **CHANCE}, "blind": blind_baselines(questions), "accuracy": accuracy,
            "training": {k: v for k, v in log.items() if k != "losses"}, "losses": log.get("losses", [])}


BASELINE_LABELS = {"text_prior": "blind: text prior", "most_common": "blind: most common"}


def card_table(card: dict[str, Any]) -> str:
    """Markdown: one row per question type, columns scene / blank / other / blind baselines / chance."""
    acc = card["accuracy"]
    blind = card.get("blind", {})
    header = ["question type", "questions", "with its scene", "blank image", "other scene",
              *(BASELINE_LABELS[b] for b in BASELINES if b in blind), "uniform chance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = [("overall", "scene_accuracy")] + [(k, f"scene_accuracy_{k}") for k in QUESTION_TYPES]
    keys += [(f"presence ({s})", f"scene_accuracy_presence_{s}") for s in POPE_SETTINGS]
    for label, key in keys:
        n = card["test_questions"] if label == "overall" else card["questions_per_type"].get(label, "")
        chance = card["chance"][label.split(" ")[0]]
        blinds = "".join(f" {blind[b].get(key, 0):.3f} |" for b in BASELINES if b in blind)
        lines.append(f"| {label} | {n} | {acc['scene'].get(key, 0):.3f} | {acc['blank'].get(key, 0):.3f} | "
                     f"{acc['other'].get(key, 0):.3f} |{blinds} {chance:.3f} |")
    return "\n".join(lines)


def _machine(card: dict[str, Any]) -> str:
    m = card.get("trained_on")
    if not m:
        return "an unrecorded machine"
    return f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']})"


def write_card(folder: Path, card: dict[str, Any]) -> None:
    spec, training = card["spec"], card["training"]
    text = f"""# Model card: {card['name']}

A LLaVA-NeXT (`LlavaNextForConditionalGeneration`) trained from seed {spec['seed']} to answer
questions about generated scenes (tampkit/organism), on {_machine(card)}. Decoder: {spec['text']['num_hidden_layers']} blocks of width
{spec['text']['hidden_size']} ({card['decoder_weights']:,} weights in decoder blocks); vision: CLIP tower,
{spec['vision']['num_hidden_layers']} layers of width {spec['vision']['hidden_size']}, {card['image_tokens']} image tokens per scene.
Trained {training['steps']} steps x {spec['batch']} scenes ({training['scenes_seen']:,} training scenes) in
{training['seconds']:.0f} s; loss {training['loss_first']:.3f} -> {training['loss_last']:.3f}.

Greedy exact-match accuracy on the first {card['test_scenes']} test scenes ({card['test_questions']} questions):

{card_table(card)}

"blank image" replaces every image with a plain grey one and "other scene" with the next question's
scene: accuracy that falls to the blind baselines there is accuracy that came from looking. The blind
baselines never see an image: "text prior" answers each question text with its most frequent answer
on the first {BLIND_FIT_SCENES:,} training scenes, "most common" each question type with its most frequent answer.
"""
    (Path(folder) / CARD_MD).write_text(text)
    (Path(folder) / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
