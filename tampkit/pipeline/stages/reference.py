"""Stage reference: the dense model on the evaluation set, once per model and evaluation settings.

It scores the dense model with the suites the evaluate stage runs (so every pruned metric has the
dense one beside it) and keeps what dense agreement needs (the dense output head's inputs at each
text position, `head_states`). It reads no pruning knob: a sweep computes it once for all its
points, and `dvc exp run -S prune.sparsity=0.6` reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tampkit.evaluation.agreement import DenseReference, agreement_inputs, make_reference
from tampkit.evaluation.perplexity import perplexity
from tampkit.evaluation.qa import ScoredItem, image_qa
from tampkit.evaluation.suites import get_suite
from tampkit.models.loading import load_model
from tampkit.pipeline.params import Params
from tampkit.pipeline.stages.context import StageContext, pristine_model
from tampkit.store.artifacts import temp_beside, write_json

METRICS_FILE = "metrics.json"
STATES_FILE = "states.safetensors"


def agreement_suite_inputs(params: Params, bundle: Any) -> tuple[list[dict[str, torch.Tensor]], bool]:
    """Dense agreement's inputs, and whether their first items are image_qa's sequences (then the
    image-QA pass feeds agreement and neither stage runs those forwards twice)."""
    e = params.evaluate
    own = get_suite("scene_qa").agreement_inputs if e.scene_qa else None
    if own is not None:  # the organism's own questions, not prose it has no words for
        return own(bundle, e.limit), False
    return agreement_inputs(bundle, e.agreement_text_windows, e.ppl_window, e.limit), bool(e.image_qa)


def run(ctx: StageContext) -> dict[str, Any]:
    """The dense model's metrics (`metrics.json`) and agreement states (`states.safetensors`)."""
    e = ctx.params.evaluate
    dense = pristine_model(ctx.params)
    if dense.residency is not None:  # an offloaded skeleton: these are whole forwards, in memory
        dense = load_model(ctx.params.model.name, ctx.params.model.dtype)
    metrics: dict[str, Any] = {}
    known: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if e.perplexity:
        metrics["heldout_perplexity"] = perplexity(dense, window=e.ppl_window, device=ctx.device, progress=ctx.progress)
    if e.image_qa:
        def keep(index: int, scored: ScoredItem) -> None:
            known[index] = (scored.states, scored.logprobs)

        values, _ = image_qa(dense, max_new_tokens=e.qa_max_new_tokens, device=ctx.device, limit=e.limit,
                             progress=ctx.progress, on_item=keep if e.dense_agreement else None,
                             keep_states=e.dense_agreement)
        metrics.update(values)
    if e.scene_qa:
        values, _ = get_suite("scene_qa").score(dense, e.limit, ctx.device, ctx.progress)
        metrics.update(values)
    states: dict[str, Any] = {"rows": [], "head": ""}
    if e.dense_agreement:
        inputs, shared = agreement_suite_inputs(ctx.params, dense)
        reference = make_reference(dense, inputs, ctx.device, progress=ctx.progress, known=known if shared else None)
        tmp = temp_beside(ctx.out / STATES_FILE)
        save_file({"states": reference.states.contiguous()}, str(tmp))
        tmp.replace(ctx.out / STATES_FILE)
        states = {"rows": reference.rows, "head": reference.head}
    write_json(ctx.out / METRICS_FILE, metrics)
    return {"metrics": metrics, "states": states}


def read_reference(folder: Path, record: dict[str, Any]) -> DenseReference | None:
    """The stored agreement states (None when the stage kept none)."""
    if not (folder / STATES_FILE).exists():
        return None
    return DenseReference(load_file(str(folder / STATES_FILE))["states"], list(record["states"]["rows"]),
                          record["states"]["head"])


def dense_metrics(folder: Path) -> dict[str, Any]:
    """The dense model's metrics the stage wrote."""
    return json.loads((folder / METRICS_FILE).read_text())
