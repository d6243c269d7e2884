"""The faster evaluation against the slow one: one forward per question (greedy decoding from its
cache) gives generate()'s answers and the same log-likelihoods; dense agreement from the reference
stage's stored head inputs gives the numbers of running the dense model; the pipeline computes the
reference once and puts the dense metrics beside the pruned ones."""

from __future__ import annotations

import json

import pytest
import torch

from tampkit.evaluation import dense_agreement, image_qa
from tampkit.evaluation.agreement import AgreementMeter, agreement_inputs, agreement_with_reference, make_reference
from tampkit.evaluation.head_states import head_digest
from tampkit.evaluation.qa import ScoredItem, answer_logprob, greedy_answer, heldout_qa_items, score_item
from tampkit.models import load_model
from tampkit.models.tiny import TINY_BUILDERS


def _pruned(name: str):
    from budgets import uniform_counts

    from tampkit.core.types import Structure
    from tampkit.engine.masking import prune_blocks
    from tampkit.methods.registry import make_method

    bundle = load_model(name)
    prune_blocks(bundle, [], make_method("magnitude"), uniform_counts(bundle, 0.5), Structure(), torch.device("cpu"),
                 progress=False)
    return bundle


@pytest.mark.parametrize("name", sorted(TINY_BUILDERS))
def test_one_forward_per_question_gives_generates_answer_and_the_same_log_likelihood(name: str) -> None:
    bundle = load_model(name)
    for item in heldout_qa_items()[:3]:
        prompt = bundle.adapter.encode(bundle, item.sample(), generation_prompt=True)
        scored = score_item(bundle, item, max_new_tokens=8)
        assert scored.record["prediction"] == greedy_answer(bundle, prompt, 8)
        total, count = answer_logprob(bundle, prompt, item.answers[0])
        assert scored.record["answer_logprob"] == pytest.approx(total / count, abs=1e-4)
    assert score_item(bundle, heldout_qa_items()[0], max_new_tokens=1).record["prediction"] == \
        greedy_answer(bundle, bundle.adapter.encode(bundle, heldout_qa_items()[0].sample(), generation_prompt=True), 1)


def test_agreement_from_stored_dense_states_equals_running_the_dense_model() -> None:
    dense, pruned = load_model("tiny-llava-next"), _pruned("tiny-llava-next")
    inputs = agreement_inputs(dense, text_windows=2, window=64, limit=3)
    live = dense_agreement(dense, pruned, inputs)
    reference = make_reference(dense, inputs)
    assert reference.usable_with(pruned) and reference.head == head_digest(dense)
    assert sum(reference.rows) == live["agreement_positions"] == reference.states.shape[0]
    stored = agreement_with_reference(reference, pruned, inputs)
    assert stored["agreement_positions"] == live["agreement_positions"]
    assert stored["agreement_kl"] == pytest.approx(live["agreement_kl"], rel=1e-5) and stored["agreement_kl"] > 0
    assert stored["agreement_top1"] == live["agreement_top1"]
    # the image-QA pass feeds its questions' forwards to agreement: same numbers, windows run after
    meter, fed = AgreementMeter(), []

    def agree(index: int, scored: ScoredItem) -> None:
        meter.add(reference.logprobs(pruned, index), scored.logprobs)
        fed.append(index)

    image_qa(pruned, limit=3, on_item=agree)
    shared = agreement_with_reference(reference, pruned, inputs, meter=meter, done=len(fed))
    assert fed == [0, 1, 2] and shared["agreement_positions"] == live["agreement_positions"]
    assert shared["agreement_kl"] == pytest.approx(live["agreement_kl"], rel=1e-5)
    # the dense QA pass's states stand in for the reference's own forwards of those questions
    known = {}

    def keep(index: int, scored: ScoredItem) -> None:
        known[index] = (scored.states, scored.logprobs)

    image_qa(dense, limit=3, on_item=keep, keep_states=True)
    reused = make_reference(dense, inputs, known=known)
    assert torch.allclose(reused.states, reference.states, atol=1e-5) and reused.rows == reference.rows


def test_a_reference_made_with_another_head_is_not_used() -> None:
    dense, other = load_model("tiny-llava"), load_model("tiny-llava")
    with torch.no_grad():
        other.model.get_output_embeddings().weight[0, 0] += 1.0
    reference = make_reference(dense, agreement_inputs(dense, text_windows=1, window=32, limit=1))
    assert reference.usable_with(dense) and not reference.usable_with(other)


def test_the_pipeline_computes_the_reference_once_and_reports_dense_metrics_beside_pruned(tmp_path) -> None:
    from tampkit.pipeline import run as pipeline
    from tampkit.pipeline.layout import Layout
    from tampkit.pipeline.params import params_from_dict
    from tampkit.store.records import read_record

    layout = Layout.under(tmp_path)
    metrics = {}
    for sparsity in (0.5, 0.7):
        params = params_from_dict({"model": {"name": "tiny-llava"}, "calibration": {"nsamples": 2},
                                   "prune": {"method": "wanda", "sparsity": sparsity},
                                   "evaluate": {"limit": 2, "agreement_text_windows": 1, "ppl_window": 64}})
        records = pipeline.run_stages(params, layout, progress=False)
        metrics[sparsity] = json.loads((layout.metrics / "metrics.json").read_text())
        assert records["reference"]["reused"] is (sparsity == 0.7)
    assert read_record(layout.reference)["status"] == "ok"
    for values in metrics.values():
        assert {"dense_heldout_perplexity", "dense_qa_exact_match", "dense_qa_answer_logprob"} <= set(values)
        assert "dense_agreement_kl" not in values
    assert metrics[0.5]["dense_heldout_perplexity"] == metrics[0.7]["dense_heldout_perplexity"]
    assert metrics[0.5]["heldout_perplexity"] != metrics[0.7]["heldout_perplexity"]
    # the agreement the stage reports is the one running the dense model gives
    dense, pruned = load_model("tiny-llava"), load_model(str(layout.pruned))
    live = dense_agreement(dense, pruned, agreement_inputs(dense, text_windows=1, window=64, limit=2))
    assert metrics[0.7]["agreement_positions"] == live["agreement_positions"]
    assert metrics[0.7]["agreement_kl"] == pytest.approx(live["agreement_kl"], rel=1e-5)
    assert metrics[0.7]["agreement_top1"] == live["agreement_top1"]
    # `tamp summary` (the end of make demo) shows each metric beside the dense model's and the paths
    from tampkit.pipeline.summary import summary_text

    text = summary_text(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("heldout_perplexity"))
    assert row.split()[-2:] == [f"{metrics[0.7]['heldout_perplexity']:.4f}", f"{metrics[0.7]['dense_heldout_perplexity']:.4f}"]
    assert f"measured {metrics[0.7]['achieved_sparsity']:.4f}" in text and f"checkpoint: {layout.pruned}/" in text
