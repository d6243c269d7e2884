"""Held-out perplexity recomputed independently of `tampkit.evaluation.perplexity`, to check the
numbers the pipeline, its drivers and `tamp compare` report: the built-in held-out paragraphs
joined by blank lines, in non-overlapping windows of `window` tokens each preceded by BOS, and
exp of the mean next-token NLL (log-softmax in fp64) over every predicted token."""

from __future__ import annotations

import math
from pathlib import Path

import torch


@torch.no_grad()
def reference_perplexity(model: str | Path, window: int = 256) -> float:
    from tampkit.calibration.builtin import heldout_paragraphs
    from tampkit.models import load_model

    bundle = load_model(str(model))
    tokenizer = bundle.tokenizer
    ids = tokenizer("\n\n".join(heldout_paragraphs()), add_special_tokens=False).input_ids
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    nll, predicted = 0.0, 0
    for start in range(0, len(ids), window):
        chunk = bos + ids[start:start + window]
        if len(chunk) < 2:
            continue
        logits = bundle.model(input_ids=torch.tensor([chunk]), use_cache=False).logits[0, :-1].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        nll -= float(logprobs[torch.arange(len(chunk) - 1), torch.tensor(chunk[1:])].sum())
        predicted += len(chunk) - 1
    assert predicted > window  # several windows: the windowing is part of what is checked
    return math.exp(nll / predicted)
