"""Agreement of a pruned model with its dense original on the same inputs.

Per text position (image positions predict nothing), the dense next-token distribution p and the
pruned one q: KL(p || q) = sum p (log p - log q), and whether their argmax tokens agree. Both are
averaged over every text position of every input: the held-out image questions with their answers
and the first windows of the held-out prose, or the inputs of a suite that brings its own (the
organism's `scene_qa`, see `tampkit.evaluation.suites`: its scene test questions with their
answers). 0 and 1 for a model compared with itself.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit.calibration.builtin import heldout_paragraphs
from tampkit.evaluation.qa import heldout_qa_items
from tampkit.core.types import TEXT, Sample
from tampkit.models.adapters import ModelBundle
from tampkit.engine.runner import to_device


def agreement_inputs(bundle: ModelBundle, text_windows: int = 4, window: int = 256,
                     limit: int = 0) -> list[dict[str, torch.Tensor]]:
    """The held-out QA conversations (question + first answer) and `text_windows` prose windows."""
    items = heldout_qa_items()
    items = items[:limit] if limit else items
    inputs = [bundle.adapter.encode(bundle, Sample(i.id, [("user", f"<image>\n{i.question}"), ("assistant", i.answers[0])],
                                                   i.sample().image)) for i in items]
    ids = bundle.tokenizer("\n\n".join(heldout_paragraphs()), add_special_tokens=False, return_tensors="pt").input_ids
    for start in range(0, min(ids.shape[1], text_windows * window), window):
        inputs.append({"input_ids": ids[:, start:start + window]})
    return inputs


@torch.no_grad()
def _text_logprobs(bundle: ModelBundle, batch: dict[str, torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """Log-probabilities at every text position of every row of `batch`, rows concatenated."""
    logits = bundle.model(**to_device(batch, device), use_cache=False).logits.float().cpu()
    rows = [logits[r][bundle.adapter.modality_labels(bundle.model, batch["input_ids"][r:r + 1]) == TEXT]
            for r in range(logits.shape[0])]
    return torch.log_softmax(torch.cat(rows), dim=-1)


def _batches(inputs: list[dict[str, torch.Tensor]], size: int) -> list[dict[str, torch.Tensor]]:
    """Inputs of identical keys and shapes, each a batch of one, stacked up to `size` rows (no
    padding, so a row's logits are the ones it gets alone); anything else stays alone."""
    groups: dict[tuple, list[dict[str, torch.Tensor]]] = {}
    for item in inputs:
        stackable = all(v.dim() > 0 and v.shape[0] == 1 for v in item.values())
        key = tuple((k, tuple(v.shape)) for k, v in sorted(item.items())) if stackable else ("alone", id(item))
        groups.setdefault(key, []).append(item)
    out = []
    for items in groups.values():
        for k in range(0, len(items), size):
            chunk = items[k:k + size]
            out.append({key: torch.cat([c[key] for c in chunk]) for key in chunk[0]})
    return out


@torch.no_grad()
def dense_agreement(dense: ModelBundle, pruned: ModelBundle, inputs: list[dict[str, torch.Tensor]],
                    device: torch.device | str = "cpu", batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """{"agreement_kl": mean KL(dense || pruned) per text position, "agreement_top1": share of
    positions whose most likely next token is the same, "agreement_positions": how many}.
    Equal-shaped inputs run `batch_size` at a time (the organism's scene questions come in a handful
    of lengths)."""
    kl_sum, agree, positions = 0.0, 0, 0
    for model in (dense.model, pruned.model):
        model.to(device)
    try:
        for batch in tqdm(_batches(inputs, batch_size), desc="dense agreement", disable=not progress, leave=False):
            p = _text_logprobs(dense, batch, device)
            q = _text_logprobs(pruned, batch, device)
            kl_sum += float((p.exp() * (p - q)).sum())
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            positions += p.shape[0]
    finally:
        for model in (dense.model, pruned.model):
            model.to("cpu")
    return {"agreement_kl": kl_sum / max(positions, 1), "agreement_top1": agree / max(positions, 1),
            "agreement_positions": positions}
