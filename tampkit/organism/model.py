"""The model organism: a small LLaVA-NeXT trained from a fixed seed to answer scene questions.

Same transformers class as the real LLaVA-NeXT (CLIP tower, projector, anyres with one 48 px tile,
row-newline tokens, Llama decoder), so every adapter and method applies unchanged. Two sizes:

- `organism`: 4 decoder blocks of width 128 (about 0.7 M decoder weights), the yardstick of the
  quality tables;
- `organism-mini`: 2 blocks of width 64, the small one some tests load.

Both are trained once and shipped (`tampkit/organism/store.py`): training is deterministic on one
machine, not across CPUs.

Training sees a fresh stream of training-split scenes (never a test scene), each as one
conversation holding all of its questions, then `relation_turns` more relation questions, then
"where is the X ?" for every object (`position_turns`), then its caption; the loss is on the answers
(and their ends of turn) only. The caption teaches the model to look; the position turns teach it to
find a named object's place, which relation questions need (without them the previous organism
answered every relation question with one word). A question asked inside a conversation is not
the question the evaluation asks alone, and a model trained on conversations only answers questions
asked alone by habit (measured: a run whose single-turn rows held relation and presence only
answered every shape question asked alone with "circle"). So from `single_turn_from` of the schedule
on, each step adds a second batch: the same scenes' questions of `single_turn_kinds` asked alone, as
the evaluation encodes them, weighted by `single_turn_weight`. (Single-turn rows from the first step
teach the model not to look at all: measured on organism-mini, blank-image accuracy equal to seeing
accuracy.) Weights depend only on the spec, the seed and this code, on one machine.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers as tf
from tqdm.auto import tqdm

from tampkit.models.adapters import ModelBundle, adapter_for
from tampkit.models.tiny import llava_next_processor, seeded
from tampkit.organism.questions import QUESTION_TYPES, position_questions, relation_questions, scene_questions
from tampkit.organism.scenes import IMAGE, Scene, make_scene
from tampkit.organism.tokenizer import word_tokenizer

PATCH = 16  # one grid cell per patch: each object is one token, which a CPU-sized model learns fast
PINPOINTS = [[IMAGE, IMAGE]]
#: LLaVA-NeXT tokens for one 48 px scene: base tile 3x3, the same tile again at "high res", 3 newlines.
#: The last turn of every training conversation: the caption is dense supervision for grounding
#: words in image tokens (every word of it needs the image), which speeds learning up a lot.
CAPTION_PROMPT = "describe the scene ."
IMAGE_TOKENS = 2 * (IMAGE // PATCH) ** 2 + IMAGE // PATCH


@dataclass(frozen=True)
class OrganismSpec:
    """Architecture and training schedule of one organism size."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    steps: int
    batch: int  # scenes per step
    lr: float
    warmup: int
    seed: int = 0
    test_scenes: int = 300
    #: Fraction of `steps` after which single-turn questions join each step (None: never).
    single_turn_from: float | None = None
    single_turn_kinds: tuple[str, ...] = ("relation", "presence")
    single_turn_weight: float = 0.5
    #: Extra relation questions (other pairs of the scene) per training conversation.
    relation_turns: int = 0
    #: Whether training conversations ask where each object is.
    position_turns: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SPECS: dict[str, OrganismSpec] = {
    "organism": OrganismSpec(
        name="organism",
        text=dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
        vision=dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
        steps=2000, batch=24, lr=2e-3, warmup=100, single_turn_from=0.5, relation_turns=3, position_turns=True,
        single_turn_kinds=QUESTION_TYPES),
    # organism-mini keeps plain conversations: no single-turn phase, no relation or where-is turns. With
    # the where-is turns, its 800 steps left it blind (0.318 with its scene, 0.322 with a blank image).
    "organism-mini": OrganismSpec(
        name="organism-mini",
        text=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
        steps=800, batch=24, lr=3e-3, warmup=50, test_scenes=100),
}


def build_untrained(spec: OrganismSpec) -> ModelBundle:
    """The organism's architecture with seeded random weights, and its processor."""
    tokenizer = word_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text_config = dict(model_type="llama", vocab_size=len(tokenizer), max_position_embeddings=512, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec.text)
    vision_config = dict(model_type="clip_vision_model", image_size=IMAGE, patch_size=PATCH,
                         projection_dim=spec.vision["hidden_size"], **spec.vision)
    config = tf.LlavaNextConfig(text_config=text_config, vision_config=vision_config, image_token_index=image_token,
                                image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="default",
                                vision_feature_layer=-1, tie_word_embeddings=False)
    model = seeded(lambda: tf.LlavaNextForConditionalGeneration(config), seed=spec.seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = llava_next_processor(tokenizer, IMAGE, PATCH, PINPOINTS)
    return ModelBundle(model=model, processor=processor, adapter=adapter_for(model), name=spec.name, max_length=512)


# --- training examples ----------------------------------------------------------------------------


def pixel_values(image: Any, processor: Any) -> torch.Tensor:
    """What the LLaVA-NeXT processor gives a 48 px image under PINPOINTS, without its per-call
    overhead: the normalised image twice (base tile and the one high-res tile); (2, 3, 48, 48).
    tests/test_organism.py checks it equals the processor's output."""
    ip = processor.image_processor
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(ip.image_mean)[:, None, None]) / torch.tensor(ip.image_std)[:, None, None]
    return torch.stack([x, x])


def turns_ids(turns: list[tuple[str, str]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input ids, labels) of (question, answer) turns about one image as one ChatML conversation, the
    image first: what `Adapter.encode` gives for those turns, with labels on each answer and its end
    of turn."""
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    ids: list[int] = []
    labels: list[int] = []
    for k, (question, answer_text) in enumerate(turns):
        content = ("<image>\n" if k == 0 else "") + question
        prompt = tokenizer(f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
                           add_special_tokens=False).input_ids
        if k == 0:
            at = prompt.index(image_token)
            prompt = prompt[:at] + [image_token] * IMAGE_TOKENS + prompt[at + 1:]
        answer = tokenizer(f"{answer_text}<|im_end|>\n", add_special_tokens=False).input_ids
        ids += prompt + answer
        labels += [-100] * len(prompt) + answer
    return ids, labels


def conversation_turns(scene: Scene, relation_turns: int = 0, position_turns: bool = False) -> list[tuple[str, str]]:
    """One scene's questions, `relation_turns` more relation questions, where each object is (if
    `position_turns`), then the caption: the turns of one training conversation."""
    questions = scene_questions(scene)
    turns = [(q.question, q.answer) for q in questions]
    if relation_turns:
        asked = {q.question for q in questions}
        others = [q for q in relation_questions(scene) if q.question not in asked]
        rng = random.Random(f"training-turns:{scene.id}")
        turns += [(q.question, q.answer) for q in rng.sample(others, min(relation_turns, len(others)))]
    if position_turns:
        turns += position_questions(scene)
    return turns + [(CAPTION_PROMPT, scene.caption())]


def conversation_ids(scene: Scene, tokenizer: Any, relation_turns: int = 0, position_turns: bool = False,
                     ) -> tuple[list[int], list[int]]:
    """`conversation_turns` as one tokenized conversation."""
    return turns_ids(conversation_turns(scene, relation_turns, position_turns), tokenizer)


def single_turn_rows(scene: Scene, kinds: tuple[str, ...], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """The scene's questions of `kinds`, each asked alone (what the evaluation feeds)."""
    return [turns_ids([(q.question, q.answer)], tokenizer) for q in scene_questions(scene) if q.kind in kinds]


def padded_batch(rows: list[tuple[list[int], list[int]]], pixels: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded LLaVA-NeXT training inputs, one image per row."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, lab) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "pixel_values": torch.stack(pixels),
            "image_sizes": torch.tensor([[IMAGE, IMAGE]] * len(rows))}


def training_batches(spec: OrganismSpec, processor: Any) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]:
    """Step k: training scenes k*batch .. (k+1)*batch - 1 as conversations, and from the single-turn
    phase on the same scenes' single-turn questions (else None)."""
    tokenizer = processor.tokenizer
    first_single = math.inf if spec.single_turn_from is None else round(spec.single_turn_from * spec.steps)
    for step in range(spec.steps):
        scenes = [make_scene("train", step * spec.batch + i) for i in range(spec.batch)]
        pixels = [pixel_values(s.image(), processor) for s in scenes]
        conversations = padded_batch([conversation_ids(s, tokenizer, spec.relation_turns, spec.position_turns)
                                      for s in scenes], pixels, tokenizer.pad_token_id)
        single = None
        if step >= first_single:
            rows, row_pixels = [], []
            for scene, px in zip(scenes, pixels):
                scene_rows = single_turn_rows(scene, spec.single_turn_kinds, tokenizer)
                rows += scene_rows
                row_pixels += [px] * len(scene_rows)
            single = padded_batch(rows, row_pixels, tokenizer.pad_token_id) if rows else None
        yield conversations, single


def _lr_factor(step: int, spec: OrganismSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(spec.steps - spec.warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(spec: OrganismSpec, progress: bool = True, checkpoints: Path | None = None,
          checkpoint_every: int = 200) -> tuple[ModelBundle, dict[str, Any]]:
    """Train the organism from its seed; returns the bundle (eval mode) and the training log.
    With `checkpoints`, the weights every `checkpoint_every` steps go to `checkpoints/step-N`
    (a `save_pretrained` folder), so a long training can be watched on the validation split from
    another process; saving changes nothing in the training."""
    bundle = build_untrained(spec)
    model = bundle.model.train()
    torch.manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec))
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(training_batches(spec, bundle.processor), total=spec.steps, desc=f"train {spec.name}",
               disable=not progress)
    for conversations, single in bar:
        loss = model(**conversations, use_cache=False).loss
        if single is not None:
            loss = loss + spec.single_turn_weight * model(**single, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if checkpoints is not None and len(losses) % checkpoint_every == 0:
            for part in (model, bundle.processor):
                part.save_pretrained(Path(checkpoints) / f"step-{len(losses)}")
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.3f}")
    model.eval()
    log = {"seconds": time.perf_counter() - start, "steps": spec.steps, "scenes_seen": spec.steps * spec.batch,
           "loss_first": sum(losses[:25]) / min(25, len(losses)), "loss_last": sum(losses[-25:]) / min(25, len(losses)),
           "losses": [round(v, 4) for v in losses]}
    return bundle, log
