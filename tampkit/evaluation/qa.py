"""Held-out image questions: log-likelihood of the reference answer and exact match of the greedy one.

The questions (one per built-in photo, `calibration/data/heldout_qa.json`) are never calibrated on.
A text-only model gets the question without the image, which is what it can answer.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit.calibration.builtin import builtin_image
from tampkit.core.types import TEXT, Sample
from tampkit.models.adapters import ModelBundle
from tampkit.engine.runner import to_device
from tampkit.evaluation.head_states import forward_keeping_head_inputs


@dataclass(frozen=True)
class QAItem:
    id: str
    image: str
    question: str
    answers: tuple[str, ...]

    def sample(self) -> Sample:
        return Sample(self.id, [("user", f"<image>\n{self.question}")], builtin_image(self.image))


def heldout_qa_items() -> list[QAItem]:
    data = json.loads((resources.files("tampkit.calibration") / "data" / "heldout_qa.json").read_text())
    return [QAItem(f"{d['image']}/heldout", d["image"], d["question"], tuple(d["answers"])) for d in data["items"]]


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """VQA-style: first line, lower case, no punctuation, no articles, single spaces."""
    text = (text.strip().splitlines() or [""])[0].lower()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


@torch.no_grad()
def continuation_logprobs(bundle: ModelBundle, prompt: dict[str, torch.Tensor], continuation: str,
                          device: torch.device | str = "cpu") -> tuple[torch.Tensor, bool]:
    """Per continuation token, log p(token | prompt, earlier tokens); and whether greedy decoding
    would produce exactly this continuation (lmms-eval's `is_greedy`)."""
    target = answer_ids(bundle, continuation)
    logits = bundle.model(**to_device(with_answer(prompt, target), device), use_cache=False).logits[0].float().cpu()
    start = prompt["input_ids"].shape[1]
    logprobs = torch.log_softmax(logits[start - 1:-1], dim=-1)
    return logprobs.gather(1, target[0][:, None])[:, 0], bool((logprobs.argmax(-1) == target[0]).all())


def answer_ids(bundle: ModelBundle, answer: str) -> torch.Tensor:
    """The answer's tokens ([1, n]), without special tokens: what follows the generation prompt."""
    return bundle.tokenizer(answer, add_special_tokens=False, return_tensors="pt").input_ids


def with_answer(prompt: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prompt's inputs with `target` appended to its tokens: the attention mask widened with
    ones, any other per-token tensor (Qwen2-VL's `mm_token_type_ids`) with zeros (text)."""
    inputs = dict(prompt)
    length = prompt["input_ids"].shape
    for key, value in prompt.items():
        if key != "input_ids" and isinstance(value, torch.Tensor) and value.shape == length:
            fill = torch.ones_like if key == "attention_mask" else torch.zeros_like
            inputs[key] = torch.cat([value, fill(target, dtype=value.dtype)], dim=1)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], target], dim=1)
    return inputs


def answer_logprob(bundle: ModelBundle, prompt: dict[str, torch.Tensor], answer: str,
                   device: torch.device | str = "cpu") -> tuple[float, int]:
    """(sum of log p(answer token | prompt, earlier answer tokens), number of answer tokens)."""
    picked, _ = continuation_logprobs(bundle, prompt, answer, device)
    return float(picked.sum()), int(picked.numel())


@torch.no_grad()
def greedy_answer(bundle: ModelBundle, prompt: dict[str, torch.Tensor], max_new_tokens: int,
                  device: torch.device | str = "cpu") -> str:
    """transformers' own greedy `generate` (the reference `score_item`'s decoding is tested against)."""
    out = bundle.model.generate(**to_device(prompt, device), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=bundle.tokenizer.pad_token_id or bundle.tokenizer.eos_token_id)
    return bundle.tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


def stop_tokens(bundle: ModelBundle) -> set[int]:
    """The tokens that end a greedy answer: the generation config's EOS ids, as `generate` reads them."""
    config = getattr(bundle.model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    return set() if ids is None else ({ids} if isinstance(ids, int) else set(ids))


@dataclass
class ScoredItem:
    """One question scored by one forward of prompt + reference answer (see `score_item`)."""

    record: dict[str, Any]
    #: The scored sequence (prompt + first accepted answer): dense agreement's input for this item.
    inputs: dict[str, torch.Tensor]
    #: Log-probabilities at the text positions of `inputs` ([text positions, vocabulary], float32):
    #: what dense agreement compares; image positions predict nothing and get no logits.
    logprobs: torch.Tensor
    #: The output head's inputs at those positions ([text positions, hidden]) when asked for, else None.
    states: torch.Tensor | None = None


def text_positions(bundle: ModelBundle, input_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the text positions of one row ([1, positions] ids)."""
    return bundle.adapter.modality_labels(bundle.model, input_ids) == TEXT


@torch.no_grad()
def score_item(bundle: ModelBundle, item: QAItem, max_new_tokens: int = 8, device: torch.device | str = "cpu",
               keep_states: bool = False) -> ScoredItem:
    """Answer log-likelihood, greedy answer and exact match of one question from ONE forward.

    The forward over prompt + reference answer gives the answer's log-probabilities, the first
    greedy token (the prompt's last position) and the KV cache; cut back to the prompt, `generate`
    continues from it for the rest of the greedy answer. Three forwards over the image and
    prompt (log-likelihood, generate's prefill, dense agreement) become one; the greedy tokens are
    generate()'s (tested on every tiny alias).
    """
    prompt = bundle.adapter.encode(bundle, item.sample(), generation_prompt=True)
    target = answer_ids(bundle, item.answers[0])
    inputs = with_answer(prompt, target)
    start = prompt["input_ids"].shape[1]
    text = text_positions(bundle, inputs["input_ids"])
    if not bool(text[start - 1:-1].all()):
        raise ValueError(f"{item.id}: the answer's positions are not all text")
    # logits only where text is predicted: the head over ~600 image positions was a fifth of the forward
    out, states = forward_keeping_head_inputs(bundle, to_device(inputs, device), keep_states, use_cache=True,
                                              logits_to_keep=text.nonzero()[:, 0].to(device))
    states = states[0] if states is not None else None
    logits = out.logits[0].float().cpu()
    if logits.shape[0] != int(text.sum()):  # a model that ignores index lists (Qwen2.5-Omni): every position
        logits, states = logits[text], (states[text] if states is not None else None)
    logprobs = torch.log_softmax(logits, dim=-1)
    row = torch.cumsum(text.long(), 0) - 1  # position -> its row among the text positions
    picked = logprobs[row[start - 1:-1]].gather(1, target[0][:, None])[:, 0]
    prediction = _greedy_from_cache(bundle, prompt["input_ids"], out.past_key_values,
                                    int(logprobs[row[start - 1]].argmax()), max_new_tokens, device)
    correct = normalize_answer(prediction) in {normalize_answer(a) for a in item.answers}
    record = {"id": item.id, "question": item.question, "answers": list(item.answers), "prediction": prediction,
              "correct": correct, "answer_logprob": float(picked.sum()) / max(int(picked.numel()), 1)}
    return ScoredItem(record, inputs, logprobs, states)


def _greedy_from_cache(bundle: ModelBundle, prompt_ids: torch.Tensor, cache: Any, first: int, max_new_tokens: int,
                       device: torch.device | str) -> str:
    """Greedy decoding from a KV cache that holds more than the prompt: cut back to the prompt, then
    transformers' own `generate` continues from it after the first token (it computes only the
    uncached positions, and keeps each model's decoding rules: Qwen2-VL's rope deltas, stop tokens)."""
    if max_new_tokens <= 0:
        return ""
    tokens = torch.cat([prompt_ids, torch.tensor([[first]])], dim=1).to(device)
    if max_new_tokens > 1 and first not in stop_tokens(bundle):
        cache.crop(prompt_ids.shape[1] - cache.get_seq_length())  # a negative count: the answer's positions go
        tokens = bundle.model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), past_key_values=cache,
                                       max_new_tokens=max_new_tokens - 1, do_sample=False,
                                       pad_token_id=bundle.tokenizer.pad_token_id or bundle.tokenizer.eos_token_id)
    return bundle.tokenizer.decode(tokens[0, prompt_ids.shape[1]:], skip_special_tokens=True)


def image_qa(bundle: ModelBundle, items: list[QAItem] | None = None, max_new_tokens: int = 8,
             device: torch.device | str = "cpu", limit: int = 0, progress: bool = False,
             on_item: Callable[[int, ScoredItem], None] | None = None,
             keep_states: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({"qa_exact_match", "qa_answer_logprob"}, per-item sample log).

    `on_item(index, scored)` sees each item's forward (dense agreement reuses it instead of
    running its own); `keep_states` keeps the output head's inputs in it (the dense reference).

    `qa_answer_logprob` is the mean over items of the per-token log-likelihood of the first
    accepted answer (higher is better); `qa_exact_match` the share of greedy answers that equal an
    accepted one after normalisation.
    """
    items = items if items is not None else heldout_qa_items()
    items = items[:limit] if limit else items
    original = next(bundle.model.parameters()).device
    bundle.model.to(device)
    logs = []
    try:
        for index, item in enumerate(tqdm(items, desc="image questions", disable=not progress, leave=False)):
            scored = score_item(bundle, item, max_new_tokens, device, keep_states)
            logs.append(scored.record)
            if on_item is not None:
                on_item(index, scored)
    finally:
        bundle.model.to(original)
    metrics = {"qa_exact_match": sum(r["correct"] for r in logs) / max(len(logs), 1),
               "qa_answer_logprob": sum(r["answer_logprob"] for r in logs) / max(len(logs), 1)}
    return metrics, logs
