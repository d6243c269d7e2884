"""Stage evaluate: the selected offline suites on the pruned checkpoint (and lmms-eval tasks when asked)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tampkit.core.log import warn
from tampkit.evaluation.agreement import AgreementMeter, agreement_with_reference, dense_agreement
from tampkit.evaluation.perplexity import perplexity
from tampkit.evaluation.qa import ScoredItem, image_qa
from tampkit.evaluation.suites import get_suite, reference_prefixes
from tampkit.models.loading import load_model
from tampkit.pipeline.stages.context import StageContext, pristine_model
from tampkit.pipeline.stages.reference import agreement_suite_inputs, dense_metrics, read_reference
from tampkit.store.artifacts import REPORT_FILE, write_json

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.json"


def run(ctx: StageContext) -> dict[str, Any]:
    """The selected offline suite on the pruned checkpoint (and lmms-eval tasks when asked).

    A suite that fails is one warning line and an entry in `errors`; the others still run and are
    reported (`metrics.json`: numbers only, for DVC; `samples.json`: per-item logs), and then the
    stage fails (run_stage records it as failed, so it reruns next time and is never reused).
    The dense model's metrics (the reference stage's) go beside the pruned ones as `dense_<name>`;
    dense agreement compares against the reference stage's dense states, with the image-QA pass's
    forwards reused for its questions, so the dense model is not run here (unless its head cannot
    stand for its logits, see `head_states`).
    """
    e = ctx.params.evaluate
    report = json.loads((ctx.layout.reports / REPORT_FILE).read_text())
    metrics: dict[str, Any] = {"target_sparsity": report["target_sparsity"],
                               "achieved_sparsity": report["achieved_sparsity"]}
    samples: dict[str, Any] = {}
    errors: dict[str, str] = {}
    pruned = load_model(str(ctx.layout.pruned))
    reference = read_reference(ctx.layout.reference, ctx.upstream["reference"])
    if reference is not None and not reference.usable_with(pruned):
        reference = None
    meter, fed = AgreementMeter(), 0
    suites: dict[str, Callable[[], None]] = {}
    if e.perplexity:
        suites["perplexity"] = lambda: metrics.update(
            heldout_perplexity=perplexity(pruned, window=e.ppl_window, device=ctx.device, progress=ctx.progress))
    if e.image_qa:
        feed = e.dense_agreement and not e.scene_qa and reference is not None

        def agree(index: int, scored: ScoredItem) -> None:  # agreement's first inputs are these sequences
            nonlocal fed
            meter.add(reference.logprobs(pruned, index, ctx.device), scored.logprobs)
            fed = index + 1

        def run_qa() -> None:
            values, samples["image_qa"] = image_qa(pruned, max_new_tokens=e.qa_max_new_tokens, device=ctx.device,
                                                   limit=e.limit, progress=ctx.progress, on_item=agree if feed else None)
            metrics.update(values)
        suites["image_qa"] = run_qa
    if e.scene_qa:  # a plug-in suite (the organism's): its scores and the references stored beside them
        def run_scene_qa() -> None:
            values, samples["scene_qa"] = get_suite("scene_qa").score(pruned, e.limit, ctx.device, ctx.progress)
            metrics.update(values)
        suites["scene_qa"] = run_scene_qa
    if e.dense_agreement:
        def run_agreement() -> None:
            inputs, shared = agreement_suite_inputs(ctx.params, pruned)
            if reference is not None:
                done = fed if shared and "image_qa" not in errors else 0
                metrics.update(agreement_with_reference(reference, pruned, inputs, ctx.device, progress=ctx.progress,
                                                        meter=meter if done else None, done=done))
                return
            dense = pristine_model(ctx.params)
            if dense.residency is not None:  # an offloaded skeleton: agreement runs whole forwards, in memory
                dense = load_model(ctx.params.model.name, ctx.params.model.dtype)
            metrics.update(dense_agreement(dense, pruned, inputs, ctx.device, progress=ctx.progress))
        suites["dense_agreement"] = run_agreement
    if e.lmms_tasks:
        def run_lmms() -> None:
            from tampkit.lmms.run import run_lmms_tasks

            values, samples["lmms"], failed = run_lmms_tasks(pruned, list(e.lmms_tasks), e.limit, str(ctx.device))
            metrics.update(values)
            for task, line in failed.items():
                errors[f"lmms:{task}"] = line
                warn(f"evaluate: lmms-eval task {task} failed: {line}")
        suites["lmms"] = run_lmms
    for name, run in suites.items():
        try:
            run()
        except Exception as err:  # noqa: BLE001 - one suite's failure must not lose the others
            errors[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            warn(f"evaluate: {name} failed: {errors[name]}")
    references = tuple(reference_prefixes())
    metrics.update({f"dense_{k}": v for k, v in dense_metrics(ctx.layout.reference).items()
                    if k in metrics and not k.startswith(references)})
    write_json(ctx.out / METRICS_FILE, metrics)
    write_json(ctx.out / SAMPLES_FILE, samples)
    return {"metrics": metrics, "errors": errors}
