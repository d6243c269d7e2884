"""Offline metrics against slow, obvious computations on tiny aliases, and the evaluate stage's
failure isolation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ppl_reference import reference_perplexity

from tampkit.evaluation import dense_agreement, image_qa, perplexity
from tampkit.evaluation.agreement import agreement_inputs
from tampkit.evaluation.qa import QAItem, answer_logprob, greedy_answer, heldout_qa_items, normalize_answer
from tampkit.models import load_model
from tampkit.core.types import TEXT


@pytest.mark.parametrize(("raw", "normal"), [("Yes.", "yes"), ("  The Cat!\nmore text", "cat"), ("an eye", "eye"),
                                             ("No, it is not", "no it is not"), ("", "")])
def test_normalize_answer(raw: str, normal: str) -> None:
    assert normalize_answer(raw) == normal


def test_heldout_questions_are_not_calibration_questions() -> None:
    from tampkit.calibration.builtin import builtin_image_samples

    calibration_text = " ".join(t for s in builtin_image_samples() for _, t in s.turns)
    items = heldout_qa_items()
    assert len(items) == 24 and len({i.image for i in items}) == 24
    assert not any(i.question in calibration_text for i in items)


@torch.no_grad()
def test_answer_logprob_equals_a_token_by_token_loop() -> None:
    bundle = load_model("tiny-llava")
    item = heldout_qa_items()[4]
    prompt = bundle.adapter.encode(bundle, item.sample(), generation_prompt=True)
    total, count = answer_logprob(bundle, prompt, "cat")
    answer = bundle.tokenizer("cat", add_special_tokens=False).input_ids
    expected, ids = 0.0, prompt["input_ids"]
    for token in answer:  # one forward per token, reading only the last position
        batch = {**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        logits = bundle.model(**batch, use_cache=False).logits[0, -1].double()
        expected += float(torch.log_softmax(logits, -1)[token])
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert count == len(answer) == 3  # byte tokenizer: one token per letter
    assert total == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_perplexity_equals_exp_of_the_mean_token_nll() -> None:
    bundle = load_model("tiny-llama")
    text = "Pruning keeps the weights that matter."
    ids = [bundle.tokenizer.bos_token_id] + bundle.tokenizer(text, add_special_tokens=False).input_ids
    nll = 0.0
    for i in range(1, len(ids)):
        logits = bundle.model(input_ids=torch.tensor([ids[:i]]), use_cache=False).logits[0, -1].double()
        nll -= float(torch.log_softmax(logits, -1)[ids[i]])
    assert perplexity(bundle, [text], window=256) == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)


def test_exact_match_counts_only_accepted_answers() -> None:
    bundle = load_model("tiny-llava")
    item = heldout_qa_items()[0]
    prompt = bundle.adapter.encode(bundle, item.sample(), generation_prompt=True)
    said = normalize_answer(greedy_answer(bundle, prompt, 8))
    right = QAItem(item.id, item.image, item.question, (said or "-", "other"))
    wrong = QAItem(item.id, item.image, item.question, (said + "x",))
    metrics, logs = image_qa(bundle, [right, wrong])
    assert metrics["qa_exact_match"] == (0.5 if said else 0.0)
    assert [r["correct"] for r in logs] == [bool(said), False]


def test_agreement_is_perfect_with_itself_and_matches_a_direct_kl() -> None:
    from budgets import uniform_counts

    from tampkit.engine.masking import prune_blocks
    from tampkit.core.types import Structure
    from tampkit.methods.registry import make_method

    dense, pruned = load_model("tiny-llava"), load_model("tiny-llava")
    prune_blocks(pruned, [], make_method("magnitude"), uniform_counts(pruned, 0.5), Structure(), torch.device("cpu"),
                 progress=False)
    inputs = agreement_inputs(dense, text_windows=1, window=64, limit=2)
    same = dense_agreement(dense, dense, inputs)
    assert same["agreement_kl"] == pytest.approx(0.0, abs=1e-9) and same["agreement_top1"] == 1.0
    ours = dense_agreement(dense, pruned, inputs)
    kl, agree, positions = 0.0, 0, 0
    with torch.no_grad():
        for batch in inputs:
            keep = dense.adapter.modality_labels(dense.model, batch["input_ids"]) == TEXT
            p = torch.distributions.Categorical(logits=dense.model(**batch, use_cache=False).logits[0][keep].double())
            q = torch.distributions.Categorical(logits=pruned.model(**batch, use_cache=False).logits[0][keep].double())
            kl += float(torch.distributions.kl_divergence(p, q).sum())
            agree += int((p.probs.argmax(-1) == q.probs.argmax(-1)).sum())
            positions += int(keep.sum())
    assert ours["agreement_positions"] == positions
    assert ours["agreement_kl"] == pytest.approx(kl / positions, rel=1e-3) and ours["agreement_kl"] > 0
    assert ours["agreement_top1"] == agree / positions < 1.0
    # equal-shaped inputs are stacked into batches: the same numbers as one at a time
    twice = inputs + [dict(i) for i in inputs]
    stacked, alone = dense_agreement(dense, pruned, twice), dense_agreement(dense, pruned, twice, batch_size=1)
    assert stacked["agreement_positions"] == alone["agreement_positions"] == 2 * positions
    assert stacked["agreement_kl"] == pytest.approx(alone["agreement_kl"], rel=1e-5)
    assert stacked["agreement_top1"] == alone["agreement_top1"]


def test_a_failing_suite_is_one_warning_the_others_are_reported_and_the_stage_fails(tmp_path, monkeypatch) -> None:
    import json

    from tampkit.pipeline import run as pipeline
    from tampkit.pipeline.stages import evaluate as evaluate_stage
    from tampkit.core.errors import StageFailed
    from tampkit.pipeline.params import params_from_dict
    from tampkit.pipeline.layout import Layout
    from tampkit.store.records import read_record

    def broken(*_args, **_kwargs):
        raise FileNotFoundError("images are on another disk\nsecond line")

    params = params_from_dict({"model": {"name": "tiny-llava"}, "calibration": {"nsamples": 2},
                               "prune": {"method": "wanda"}, "evaluate": {"limit": 2, "agreement_text_windows": 1}})
    layout = Layout.under(tmp_path)
    monkeypatch.setattr(evaluate_stage, "image_qa", broken)
    with pytest.raises(StageFailed) as failed:
        pipeline.run_stages(params, layout, progress=False)
    assert "\n" not in str(failed.value) and "image_qa: FileNotFoundError: images are on another disk" in str(failed.value)
    record = read_record(layout.metrics)
    assert record["status"] == "failed"
    assert record["errors"] == {"image_qa": "FileNotFoundError: images are on another disk"}
    assert record["warnings"] == ["evaluate: image_qa failed: FileNotFoundError: images are on another disk"]
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    assert {"heldout_perplexity", "agreement_kl", "agreement_top1"} <= set(metrics) and "qa_exact_match" not in metrics


def test_metric_names_are_valid_mlflow_names() -> None:
    from mlflow.utils.validation import _validate_metric_name

    from tasks.tracking import clean_metric_name

    for raw in ("exact_match,none", "gqa/acc,none", "heldout_perplexity", "mme_percetion_score,none", "a b:c"):
        name = clean_metric_name(raw)
        _validate_metric_name(name)
        assert "," not in name


def test_compare_tables_and_plots_results_from_folders(tmp_path, capsys) -> None:
    from tampkit.cli import main
    from tampkit.pipeline.params import params_from_dict
    from tampkit.pipeline.run import run_stages
    from tampkit.pipeline.layout import Layout

    base = {"model": {"name": "tiny-llama"}, "calibration": {"source": "builtin-text", "nsamples": 2},
            "evaluate": {"image_qa": False, "dense_agreement": False}}
    for method, sparsity in (("magnitude", 0.0), ("magnitude", 0.5), ("wanda", 0.5)):
        params = params_from_dict({**base, "prune": {"method": method, "sparsity": sparsity}})
        run_stages(params, Layout.shared(tmp_path / "shared", tmp_path / "runs" / f"{method}-{sparsity}"), progress=False)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "runs"), "--metrics", "achieved_sparsity,heldout_perplexity",
                 "--plot", str(tmp_path / "plots")]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    reference = [line.strip("| ").split(" | ") for line in lines if line.startswith("| *")]
    lines = [line for line in lines if not line.startswith("| *")]
    assert [line.split(" | ")[0] for line in lines] == ["| dense", "| magnitude", "| wanda"]
    # the reference stage's dense metrics, carried by every run, are the sparsity-0 run's
    assert [r[0] for r in reference] == ["*dense model (reference stage)*"] and reference[0][4] == lines[0].strip("| ").split(" | ")[4]
    cells = [line.strip("| ").split(" | ") for line in lines]
    assert [float(c[3]) for c in cells] == [0.0, 0.5, 0.5]  # achieved, counted from the saved weights
    # each perplexity is the one of that run's own checkpoint, recomputed here; and pruning half the
    # weights changes it (the dense row is not repeated)
    ppl = {}
    for (method, sparsity), cell in zip((("magnitude", 0.0), ("magnitude", 0.5), ("wanda", 0.5)), cells):
        run = tmp_path / "runs" / f"{method}-{sparsity}"
        reported = json.loads((run / "metrics" / "metrics.json").read_text())["heldout_perplexity"]
        assert cell[4] == f"{reported:.4f}"
        ppl[method, sparsity] = reported
        assert reported == pytest.approx(reference_perplexity(run / "pruned", window=256), rel=1e-6)
    assert len({round(v, 2) for v in ppl.values()}) == 3
    assert (tmp_path / "plots" / "heldout_perplexity_vs_sparsity.png").stat().st_size > 1000


def test_compare_adds_scene_retention_against_dense_and_shows_each_model_only_its_metrics() -> None:
    from tampkit.reporting.compare import format_table, result_row, with_retention

    rows = [result_row("org", "wanda", 0.0, "unstructured", {"scene_accuracy": 0.8}),
            result_row("org", "wanda", 0.5, "unstructured", {"scene_accuracy": 0.6}),
            result_row("org", "tamp", 0.5, "2:4", {"scene_accuracy": 0.4}),
            result_row("lm", "wanda", 0.5, "unstructured", {"heldout_perplexity": 12.0})]
    retained = {(r["model"], r["method"], r["structure"]): r.get("scene_retention") for r in with_retention(rows)}
    assert retained == {("org", "dense", "unstructured"): 1.0, ("org", "wanda", "unstructured"): 0.6 / 0.8,
                        ("org", "tamp", "2:4"): 0.4 / 0.8, ("lm", "wanda", "unstructured"): None}
    lm, org = format_table(rows).split("### org")  # models in name order
    assert "scene_retention" in org and "heldout_perplexity" not in org
    assert "heldout_perplexity" in lm and "scene" not in lm


def test_best_methods_ranks_by_the_mean_over_the_asked_sparsities() -> None:
    from tampkit.reporting.compare import best_methods

    def row(method: str, sparsity: float, acc: float, structure: str = "unstructured") -> dict:
        return {"model": "m", "method": method, "sparsity": sparsity, "structure": structure, "scene_accuracy": acc}

    rows = [row("dense", 0.0, 0.9), row("a", 0.6, 0.8), row("a", 0.7, 0.2), row("b", 0.6, 0.5), row("b", 0.7, 0.45),
            row("c", 0.6, 0.99), row("d", 0.6, 0.4), row("d", 0.7, 0.4), row("d", 0.5, 0.99, "2:4")]
    # c lacks 0.7, and dense and N:M rows never count: a averages 0.5, b 0.475, d 0.4
    assert best_methods(rows, "scene_accuracy", [0.6, 0.7], 2) == ["a", "b"]
    assert best_methods(rows, "scene_accuracy", [0.6, 0.7], 2, higher_is_better=False) == ["d", "b"]
    assert best_methods(rows, "scene_accuracy", [0.6], 1) == ["c"]
