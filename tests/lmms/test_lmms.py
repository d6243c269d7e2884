"""lmms-eval on our model class, offline: the local tasks in process and through `python -m lmms_eval`
(the model found through the `lmms_eval.models` entry point), and per-task error isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tampkit.evaluation.qa import answer_logprob, greedy_answer, heldout_qa_items, normalize_answer
from tampkit.models import load_model

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def test_local_tasks_in_process_match_our_own_scoring_and_isolate_failures(monkeypatch) -> None:
    import tampkit.lmms.tasks as local_tasks
    from tampkit.evaluation.qa import QAItem
    from tampkit.lmms.run import run_lmms_tasks

    bundle = load_model("tiny-llava")
    # Our own greedy answers to the first two questions (cut at the task's "\n" stop, as it does).
    # The untrained model gets neither right; the first question also accepts what it says, so
    # lmms-eval's exact match has one right and one wrong answer to find: 0.5, not a constant.
    items = heldout_qa_items()
    prompts = [bundle.adapter.encode(bundle, item.sample(), generation_prompt=True) for item in items[:2]]
    answers = [greedy_answer(bundle, prompt, 8).split("\n")[0] for prompt in prompts]
    items[0] = QAItem(items[0].id, items[0].image, items[0].question, (*items[0].answers, answers[0]))
    monkeypatch.setattr(local_tasks, "heldout_qa_items", lambda: list(items))
    right = [normalize_answer(a) in {normalize_answer(r) for r in item.answers} for a, item in zip(answers, items)]
    assert right == [True, False]
    metrics, samples, errors = run_lmms_tasks(bundle, ["tamp_image_qa", "tamp_image_qa_ll", "gqa", "no_such_task",
                                                       "tamp_av_qa"], limit=2)
    # gqa's data is on the hub, LLaVA reads no video: one line each, the rest still scored
    assert set(errors) == {"gqa", "no_such_task", "tamp_av_qa"}
    assert errors["no_such_task"] == "unknown lmms-eval task 'no_such_task'"
    assert errors["tamp_av_qa"].startswith("ValueError: lmms-eval task 'tamp_av_qa' doc ")
    assert "the llava model cannot take video" in errors["tamp_av_qa"]
    assert all("\n" not in line for line in errors.values())
    logged = sorted(samples["tamp_image_qa"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in logged] == [0, 1]
    assert [s["filtered_resps"][0] for s in logged] == answers
    assert metrics["lmms.tamp_image_qa.exact_match"] == 0.5
    # lmms-eval's loglikelihood through our class = our answer_logprob on the same two questions
    expected = [answer_logprob(bundle, prompt, item.answers[0])[0] for prompt, item in zip(prompts, items)]
    assert metrics["lmms.tamp_image_qa_ll.answer_loglikelihood"] == pytest.approx(sum(expected) / 2, abs=1e-3)
    assert all("," not in name for name in metrics)


def test_multi_round_generation_follows_the_tasks_doc_to_text() -> None:
    from lmms_eval.api.instance import Instance

    from tampkit.lmms.model import TampkitLMM

    model = TampkitLMM(bundle=load_model("tiny-llava"), device="cpu")
    model.task_dict = {"t": {"test": {0: {"q": "Say something."}}}}
    calls = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        calls.append((round_idx, list(previous_output)))
        return [], f"Round {round_idx}: go on.", round_idx == 3, previous_output, previous_round_info

    request = Instance(request_type="generate_until_multi_round", doc={}, idx=0,
                       metadata={"task": "t", "doc_id": 0, "repeats": 1},
                       arguments=("Say something.", {"max_new_tokens": 3}, lambda doc: [], doc_to_text, 0, "t", "test"))
    (result,) = model.generate_until_multi_round([request])
    assert len(result) == 3 and [c[0] for c in calls] == [1, 2, 3]
    assert [len(c[1]) for c in calls] == [1, 2, 3]


def test_python_m_lmms_eval_runs_a_pruned_checkpoint(tmp_path: Path) -> None:
    from tampkit.cli import main
    from tampkit.lmms.tasks import write_local_tasks

    out = tmp_path / "pruned"
    assert main(["prune", "--model", "tiny-llava", "--method", "wanda", "--sparsity", "0.5", "--out", str(out),
                 "--nsamples", "2", "--no-progress", "--no-plots"]) == 0
    tasks = write_local_tasks(tmp_path / "tasks")
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "tampkit", "--model_args",
                           f"pretrained={out},device=cpu", "--tasks", "tamp_image_qa", "--include_path", str(tasks),
                           "--limit", "2", "--batch_size", "1", "--output_path", str(tmp_path / "results")],
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (results,) = list((tmp_path / "results").glob("**/*_results.json"))
    assert "exact_match,none" in json.loads(results.read_text())["results"]["tamp_image_qa"]


def test_a_checkpoint_that_is_not_a_model_is_one_clear_line(tmp_path: Path) -> None:
    from tampkit.core.errors import UsageError
    from tampkit.lmms.model import TampkitLMM

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UsageError, match="has no config.json, so it is not a saved model") as caught:
        TampkitLMM(pretrained=str(tmp_path))
    assert "\n" not in str(caught.value)


def test_scene_task_through_lmms_eval_agrees_with_our_scene_suite() -> None:
    """tamp_scene_qa on organism-mini (trained once per machine): lmms-eval's exact match over the
    first questions equals our own scene_qa's accuracy over the same questions."""
    from tampkit.organism.scene_qa import scene_qa, test_questions
    from tampkit.lmms.run import run_lmms_tasks

    bundle = load_model("organism-mini")
    metrics, samples, errors = run_lmms_tasks(bundle, ["tamp_scene_qa"], limit=6)
    assert not errors
    ours, _ = scene_qa(bundle, test_questions()[:6])
    assert metrics["lmms.tamp_scene_qa.exact_match"] == pytest.approx(ours["scene_accuracy"])


# --- every medium reaches the adapter, or the request fails in one line ---------------------------


def test_av_task_gives_the_omni_thinker_its_video_and_audio(monkeypatch) -> None:
    """tamp_av_qa hands a frames folder and a 24 kHz audio record (lmms-eval's convention); the
    thinker's inputs must hold that clip's frames and its sound at 16 kHz, as video and audio tokens."""
    from tampkit.calibration.av_builtin import make_clip
    from tampkit.lmms.run import run_lmms_tasks
    from tampkit.core.types import AUDIO, VIDEO

    bundle = load_model("tiny-qwen2.5-omni")
    encode, seen = bundle.adapter.encode, []

    def spy(bundle_, sample, generation_prompt=False):
        inputs = encode(bundle_, sample, generation_prompt)
        seen.append((sample, inputs))
        return inputs

    monkeypatch.setattr(bundle.adapter, "encode", spy)
    metrics, samples, errors = run_lmms_tasks(bundle, ["tamp_av_qa"], limit=2)
    assert not errors and "lmms.tamp_av_qa.exact_match" in metrics and len(samples["tamp_av_qa"]) == 2
    assert sorted(int(sample.id.rsplit(" ", 1)[1]) for sample, _ in seen) == [0, 1]
    token_ids = bundle.adapter.modality_token_ids(bundle.model)
    for sample, inputs in seen:
        clip = make_clip(int(sample.id.rsplit(" ", 1)[1]))
        assert [np.asarray(f).tolist() for f in sample.video] == [np.asarray(f).tolist() for f in clip.frames()]
        assert sample.audio.shape == clip.audio().shape  # resampled from 24 kHz to the model's 16 kHz
        assert np.corrcoef(sample.audio, clip.audio())[0, 1] > 0.99
        assert {"pixel_values_videos", "input_features"} <= set(inputs)
        ids = inputs["input_ids"][0]
        assert int((ids == token_ids[VIDEO]).sum()) > 0 and int((ids == token_ids[AUDIO]).sum()) > 0
        assert sample.turns[0][1] in bundle.tokenizer.decode(ids)  # the question too


def _request(kind: str, visuals: list):
    from lmms_eval.api.instance import Instance

    args = ("What is this?", {"max_new_tokens": 2} if kind == "generate_until" else "A cat.",
            lambda doc: visuals, 0, "t", "test")
    return Instance(request_type=kind, doc={}, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                    arguments=args)


@pytest.mark.parametrize("model, visuals, message", [
    ("tiny-llava", ["clip.mp4"], "the llava model cannot take video (it takes image)"),
    ("tiny-llava", [{"array": np.zeros(800, np.float32), "sampling_rate": 8000}], "the llava model cannot take audio"),
    ("tiny-llama", [Image.new("RGB", (32, 32))], "the causal-lm model cannot take image (it takes text only)"),
    ("tiny-llava", [Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32), "red")],
     "2 images in one request, but the llava model takes one image per request"),
    ("tiny-qwen2.5-omni", [[Image.new("RGB", (32, 32))] * 2], "2 images in one request, but the qwen2.5-omni model"),
    ("tiny-llava", [3], "a visual of type int ('3') is no image, video or audio the llava model can read"),
])
@pytest.mark.parametrize("kind", ["generate_until", "loglikelihood"])
def test_media_a_model_cannot_take_fail_in_one_line(model: str, visuals: list, message: str, kind: str) -> None:
    from tampkit.lmms.model import TampkitLMM

    lmm = TampkitLMM(bundle=load_model(model), device="cpu")
    lmm.task_dict = {"t": {"test": {0: {}}}}
    with pytest.raises(ValueError) as caught:
        getattr(lmm, kind)([_request(kind, visuals)])
    assert str(caught.value).startswith("lmms-eval task 't' doc 0: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_one_image_still_reaches_llava_with_and_without_a_marker() -> None:
    """The single image each family reads is passed, placed where the context's `<image>` marks it."""
    from tampkit.lmms.model import TampkitLMM

    lmm = TampkitLMM(bundle=load_model("tiny-llava"), device="cpu")
    image = Image.new("RGB", (32, 32), "blue")
    front = lmm._prompt("What is this?", [image], "here")
    inline = lmm._prompt("Look: <image> What is this?", [image], "here")
    pixels = lmm.bundle.processor(text=["<image>"], images=[image], return_tensors="pt")["pixel_values"]
    assert torch.equal(front["pixel_values"], pixels) and torch.equal(inline["pixel_values"], pixels)
    text = lmm.bundle.tokenizer.decode(inline["input_ids"][0])
    assert text.index("Look:") < text.index("<image>") < text.index("What is this?")
