"""Held-out image questions: log-likelihood of the reference answer and exact match of the greedy one.

The questions (one per built-in photo, `calibration/data/heldout_qa.json`) are never calibrated on.
A text-only model gets the question without the image, which is what it can answer.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit.calibration.builtin import builtin_image
from tampkit.core.types import Sample
from tampkit.models.adapters import ModelBundle
from tampkit.engine.runner import to_device


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
    target = bundle.tokenizer(continuation, add_special_tokens=False, return_tensors="pt").input_ids
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], target], dim=1)
    if "attention_mask" in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    logits = bundle.model(**to_device(inputs, device), use_cache=False).logits[0].float().cpu()
    start = prompt["input_ids"].shape[1]
    logprobs = torch.log_softmax(logits[start - 1:-1], dim=-1)
    return logprobs.gather(1, target[0][:, None])[:, 0], bool((logprobs.argmax(-1) == target[0]).all())


def answer_logprob(bundle: ModelBundle, prompt: dict[str, torch.Tensor], answer: str,
                   device: torch.device | str = "cpu") -> tuple[float, int]:
    """(sum of log p(answer token | prompt, earlier answer tokens), number of answer tokens)."""
    picked, _ = continuation_logprobs(bundle, prompt, answer, device)
    return float(picked.sum()), int(picked.numel())


@torch.no_grad()
def greedy_answer(bundle: ModelBundle, prompt: dict[str, torch.Tensor], max_new_tokens: int,
                  device: torch.device | str = "cpu") -> str:
    out = bundle.model.generate(**to_device(prompt, device), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=bundle.tokenizer.pad_token_id or bundle.tokenizer.eos_token_id)
    return bundle.tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


def image_qa(bundle: ModelBundle, items: list[QAItem] | None = None, max_new_tokens: int = 8,
             device: torch.device | str = "cpu", limit: int = 0,
             progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({"qa_exact_match", "qa_answer_logprob"}, per-item sample log).

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
        for item in tqdm(items, desc="image questions", disable=not progress, leave=False):
            prompt = bundle.adapter.encode(bundle, item.sample(), generation_prompt=True)
            total, count = answer_logprob(bundle, prompt, item.answers[0], device)
            prediction = greedy_answer(bundle, prompt, max_new_tokens, device)
            correct = normalize_answer(prediction) in {normalize_answer(a) for a in item.answers}
            logs.append({"id": item.id, "question": item.question, "answers": list(item.answers),
                         "prediction": prediction, "correct": correct, "answer_logprob": total / count})
    finally:
        bundle.model.to(original)
    metrics = {"qa_exact_match": sum(r["correct"] for r in logs) / max(len(logs), 1),
               "qa_answer_logprob": sum(r["answer_logprob"] for r in logs) / max(len(logs), 1)}
    return metrics, logs
