"""Agreement of a pruned model with its dense original on the same inputs.

Per text position (image positions predict nothing), the dense next-token distribution p and the
pruned one q: KL(p || q) = sum p (log p - log q), and whether their argmax tokens agree. Both are
averaged over every text position of every input: the held-out image questions as the image-QA
suite scores them (prompt + first accepted answer, so the evaluate stage reuses that suite's
forward) and the first windows of the held-out prose, or the inputs of a suite that brings its own
(the organism's `scene_qa`, see `tampkit.evaluation.suites`: its scene test questions with their
answers). 0 and 1 for a model compared with itself.

The dense side comes from the model itself (`dense_agreement`) or from a `DenseReference`: the
dense model's output-head inputs at every text position, made once per model and evaluation set
by the reference stage and turned back into p with the pruned model's (identical) head, so an
evaluation never reruns the dense model (see `head_states`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit.calibration.builtin import heldout_paragraphs
from tampkit.evaluation.head_states import forward_keeping_head_inputs, head_digest, head_logprobs, head_reproduces
from tampkit.evaluation.qa import answer_ids, heldout_qa_items, text_positions, with_answer
from tampkit.core.types import TEXT
from tampkit.models.adapters import ModelBundle
from tampkit.engine.runner import to_device


def agreement_inputs(bundle: ModelBundle, text_windows: int = 4, window: int = 256,
                     limit: int = 0) -> list[dict[str, torch.Tensor]]:
    """The held-out questions as `image_qa` scores them (prompt + first answer; the same order and
    `limit`), then `text_windows` prose windows."""
    items = heldout_qa_items()
    items = items[:limit] if limit else items
    inputs = [with_answer(bundle.adapter.encode(bundle, i.sample(), generation_prompt=True), answer_ids(bundle, i.answers[0]))
              for i in items]
    ids = bundle.tokenizer("\n\n".join(heldout_paragraphs()), add_special_tokens=False, return_tensors="pt").input_ids
    for start in range(0, min(ids.shape[1], text_windows * window), window):
        inputs.append({"input_ids": ids[:, start:start + window]})
    return inputs


@torch.no_grad()
def _text_rows(bundle: ModelBundle, batch: dict[str, torch.Tensor], device: torch.device | str,
               keep_states: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per row of `batch`: log-probabilities at its text positions (and the head's inputs there)."""
    out, states = forward_keeping_head_inputs(bundle, to_device(batch, device), keep_states, use_cache=False)
    logits = out.logits.float().cpu()
    keep = [text_positions(bundle, batch["input_ids"][r:r + 1]) for r in range(logits.shape[0])]
    rows = [torch.log_softmax(logits[r][k], dim=-1) for r, k in enumerate(keep)]
    return rows, ([states[r][k] for r, k in enumerate(keep)] if keep_states else None)


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


class AgreementMeter:
    """Running sums of KL(p || q), top-1 agreement and positions over text positions."""

    def __init__(self) -> None:
        self.kl_sum, self.agree, self.positions = 0.0, 0, 0

    def add(self, p: torch.Tensor, q: torch.Tensor) -> None:
        """One input's dense (`p`) and pruned (`q`) log-probabilities at the same text positions."""
        self.kl_sum += float((p.exp() * (p - q)).sum())
        self.agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        self.positions += p.shape[0]

    def result(self) -> dict[str, Any]:
        return {"agreement_kl": self.kl_sum / max(self.positions, 1),
                "agreement_top1": self.agree / max(self.positions, 1), "agreement_positions": self.positions}


@torch.no_grad()
def dense_agreement(dense: ModelBundle, pruned: ModelBundle, inputs: list[dict[str, torch.Tensor]],
                    device: torch.device | str = "cpu", batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """{"agreement_kl": mean KL(dense || pruned) per text position, "agreement_top1": share of
    positions whose most likely next token is the same, "agreement_positions": how many}, running
    both models. Equal-shaped inputs run `batch_size` at a time (the organism's scene questions come
    in a handful of lengths)."""
    meter = AgreementMeter()
    for model in (dense.model, pruned.model):
        model.to(device)
    try:
        for batch in tqdm(_batches(inputs, batch_size), desc="dense agreement", disable=not progress, leave=False):
            for p, q in zip(_text_rows(dense, batch, device)[0], _text_rows(pruned, batch, device)[0]):
                meter.add(p, q)
    finally:
        for model in (dense.model, pruned.model):
            model.to("cpu")
    return meter.result()


@dataclass
class DenseReference:
    """The dense model's output-head inputs at the text positions of each agreement input, in
    input order (`states` concatenated, `rows[i]` of them for input i), and the head they go with."""

    states: torch.Tensor
    rows: list[int]
    head: str

    @functools.cached_property
    def offsets(self) -> list[int]:
        """Where each input's rows start in `states` (and, last, where they end)."""
        return [0, *itertools.accumulate(self.rows)]

    def logprobs(self, bundle: ModelBundle, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense log-probabilities at input `index`'s text positions, through `bundle`'s head."""
        start = self.offsets[index]
        return head_logprobs(bundle, self.states[start:start + self.rows[index]], device)

    def usable_with(self, bundle: ModelBundle) -> bool:
        """Whether `bundle` carries the head these states were made with (pruning keeps it)."""
        return bool(self.head) and head_digest(bundle) == self.head


@torch.no_grad()
def make_reference(dense: ModelBundle, inputs: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu",
                   batch_size: int = 32, progress: bool = False,
                   known: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> DenseReference:
    """The dense model's head inputs at every text position of `inputs`. `known[i]` = (states,
    log-probs) an earlier forward already gave for input i (the dense image-QA pass). The head
    digest is left empty when the head alone does not reproduce the model's log-probabilities
    (soft-capped logits and the like): then agreement must run the dense model."""
    known = dict(known or {})
    todo = [i for i in range(len(inputs)) if i not in known]
    dense.model.to(device)
    try:
        for indices, batch in tqdm(_indexed_batches([inputs[i] for i in todo], batch_size), desc="dense reference",
                                   disable=not progress, leave=False):
            rows, states = _text_rows(dense, batch, device, keep_states=True)
            for k, row, state in zip(indices, rows, states):
                known[todo[k]] = (state, row)
    finally:
        dense.model.to("cpu")
    ordered = [known[i] for i in range(len(inputs))]
    reproduces = all(head_reproduces(dense, s, lp, device) for s, lp in ordered[:4])
    return DenseReference(torch.cat([s for s, _ in ordered]) if ordered else torch.zeros(0, 0),
                          [int(s.shape[0]) for s, _ in ordered], head_digest(dense) if reproduces else "")


@torch.no_grad()
def agreement_with_reference(reference: DenseReference, pruned: ModelBundle, inputs: list[dict[str, torch.Tensor]],
                             device: torch.device | str = "cpu", batch_size: int = 32, progress: bool = False,
                             meter: AgreementMeter | None = None, done: int = 0) -> dict[str, Any]:
    """`dense_agreement` with the dense side read from `reference`: only the pruned model runs.
    `meter` may already hold the first `done` inputs (the image-QA pass fed them)."""
    meter = meter or AgreementMeter()
    pruned.model.to(device)
    try:
        for indices, batch in tqdm(_indexed_batches(inputs[done:], batch_size), desc="dense agreement",
                                   disable=not progress, leave=False):
            for k, q in zip(indices, _text_rows(pruned, batch, device)[0]):
                meter.add(reference.logprobs(pruned, done + k, device), q)
    finally:
        pruned.model.to("cpu")
    return meter.result()


def _indexed_batches(inputs: list[dict[str, torch.Tensor]], size: int) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """`_batches` with each batch's input indices."""
    tagged = [dict(item, _index=torch.tensor([i])) for i, item in enumerate(inputs)]
    out = []
    for batch in _batches(tagged, size):
        indices = [int(i) for i in batch.pop("_index")]
        out.append((indices, batch))
    return out
