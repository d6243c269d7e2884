"""Offline quality measures. For now: perplexity on the built-in held-out prose."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from tampkit.calibration.builtin import heldout_paragraphs
from tampkit.models.adapters import ModelBundle


@torch.no_grad()
def perplexity(bundle: ModelBundle, texts: list[str] | None = None, window: int = 256,
               device: torch.device | str = "cpu", progress: bool = False) -> float:
    """exp(mean next-token NLL) over the texts joined by blank lines, in non-overlapping windows.

    Every window starts with the tokenizer's BOS when it has one, so each is scored as a fresh
    document and every one of its tokens is predicted.
    """
    tokenizer = bundle.tokenizer
    text = "\n\n".join(texts if texts is not None else heldout_paragraphs())
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    bos = tokenizer.bos_token_id
    model = bundle.model
    original = next(model.parameters()).device
    model.to(device)
    total_nll, total_tokens = 0.0, 0
    try:
        starts = range(0, len(ids) - 1, window)
        for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
            chunk = ids[start:start + window]
            if bos is not None:
                chunk = torch.cat([torch.tensor([bos]), chunk])
            if len(chunk) < 2:
                continue
            chunk = chunk[None].to(device)
            logits = model(input_ids=chunk, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += chunk.shape[1] - 1
    finally:
        model.to(original)
    return math.exp(total_nll / max(total_tokens, 1))
