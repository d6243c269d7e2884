"""Offline lmms-eval tasks over built-in image, scene and audio-video questions.

lmms-eval reads local tasks from a folder of YAML files whose dataset paths must be absolute,
so the folder is written at run time: `write_local_tasks(folder)` (or `python -m tampkit.lmms.tasks
[FOLDER]`, which prints the folder to pass as `--include_path`).

- `tamp_image_qa` (generate_until): exact match of the normalised greedy answer;
- `tamp_image_qa_ll` (loglikelihood): log-likelihood of the reference answer, and whether it is
  the greedy continuation;
- `tamp_scene_qa` (generate_until): the organism's test split (generated scenes, rendered when
  asked for), exact match overall; the per-type accuracies are the pipeline's `scene_qa` suite;
- `tamp_av_qa` (generate_until): the built-in audio-video clips (`calibration/av_builtin.py`),
  handed over the way lmms-eval's hub video/audio tasks do it: the video as a path (a folder of
  frames, which needs no video decoder), the audio as an `{"array", "sampling_rate"}` record at
  24 kHz (the model resamples it). Questions whose answers follow from how a clip was made.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tampkit.calibration.av_builtin import make_clip
from tampkit.core.types import SAMPLE_RATE
from tampkit.evaluation.qa import heldout_qa_items
from tampkit.organism.scene_qa import test_questions

AV_CLIPS = 8
AV_RATE = 24000  # not the models' 16 kHz, so every run exercises the resampling

_UTILS = '''"""doc_to_* and process_results of the tampkit local tasks (written by tampkit.lmms.tasks)."""
import ast

from tampkit.calibration.builtin import builtin_image
from tampkit.evaluation.qa import normalize_answer


def doc_to_visual(doc):
    return [builtin_image(doc["image"])]


def scene_to_visual(doc):
    from tampkit.organism.scenes import make_scene

    return [make_scene(doc["split"], doc["index"]).image()]


def av_to_visual(doc):
    import numpy as np

    return [doc["video"], {"array": np.load(doc["audio"]), "sampling_rate": doc["sampling_rate"]}]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_target(doc):
    return doc["answers"][0]


def exact_match(doc, results):
    accepted = {normalize_answer(a) for a in doc["answers"]}
    return {"exact_match": float(normalize_answer(results[0]) in accepted)}


def answer_loglikelihood(doc, results):
    # lmms-eval 0.7 hands [(ll, is_greedy)] with the pair turned into its string form
    pair = results[0] if len(results) == 1 else results
    loglikelihood, is_greedy = ast.literal_eval(pair) if isinstance(pair, str) else pair
    return {"answer_loglikelihood": float(loglikelihood), "greedy_match": float(is_greedy)}
'''

_COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.{visual}
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
metadata:
  version: 1
"""

_GENERATE = """task: {task}
output_type: generate_until
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  do_sample: false
  until: ["\\n"]
process_results: !function utils.exact_match
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

_LOGLIKELIHOOD = """task: tamp_image_qa_ll
output_type: loglikelihood
process_results: !function utils.answer_loglikelihood
metric_list:
  - metric: answer_loglikelihood
    aggregation: mean
    higher_is_better: true
  - metric: greedy_match
    aggregation: mean
    higher_is_better: true
"""


def write_local_tasks(folder: Path | str | None = None) -> Path:
    """Write the task folder (data, utils, YAMLs) and return it (the `--include_path`)."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="tampkit-lmms-tasks-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "heldout_qa.jsonl"
    data.write_text("".join(json.dumps({"id": i.id, "image": i.image, "question": i.question,
                                        "answers": list(i.answers)}) + "\n" for i in heldout_qa_items()))
    (folder / "utils.py").write_text(_UTILS)
    common = _COMMON.format(data=json.dumps(str(data.resolve())), visual="doc_to_visual")
    (folder / "tamp_image_qa.yaml").write_text(_GENERATE.format(task="tamp_image_qa", max_new_tokens=8) + common)
    (folder / "tamp_image_qa_ll.yaml").write_text(_LOGLIKELIHOOD + common)
    scenes = folder / "scene_qa.jsonl"
    scenes.write_text("".join(json.dumps({"id": q.id, "split": q.scene.split, "index": q.scene.index, "type": q.kind,
                                          "question": q.question, "answers": [q.answer]}) + "\n"
                              for q in test_questions()))
    (folder / "tamp_scene_qa.yaml").write_text(_GENERATE.format(task="tamp_scene_qa", max_new_tokens=3)
                                               + _COMMON.format(data=json.dumps(str(scenes.resolve())),
                                                                visual="scene_to_visual"))
    av = folder / "av_qa.jsonl"
    av.write_text("".join(json.dumps(record) + "\n" for record in _write_av_clips(folder / "av")))
    (folder / "tamp_av_qa.yaml").write_text(_GENERATE.format(task="tamp_av_qa", max_new_tokens=3)
                                            + _COMMON.format(data=json.dumps(str(av.resolve())), visual="av_to_visual"))
    return folder


def _write_av_clips(folder: Path) -> list[dict]:
    """Clip i's frames as PNGs in `clip<i>/` and its sound as a 24 kHz `.npy`; one question each."""
    records = []
    for index in range(AV_CLIPS):
        clip = make_clip(index)
        frames = folder / f"clip{index}"
        frames.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(clip.frames()):
            frame.save(frames / f"{k:03d}.png")
        wave = clip.audio()
        count = round(len(wave) * AV_RATE / SAMPLE_RATE)
        np.save(folder / f"clip{index}.npy", np.interp(np.linspace(0, len(wave) - 1, count), np.arange(len(wave)),
                                                       wave).astype(np.float32))
        if index % 2:
            question, answer = f"Which way does the {clip.colour} {clip.shape} move? One word.", clip.motion
        else:
            question, answer = "Is the sound rising in pitch? Yes or no.", "yes" if clip.sound == "rising" else "no"
        records.append({"id": f"av-{index}", "video": str(frames.resolve()),
                        "audio": str((folder / f"clip{index}.npy").resolve()), "sampling_rate": AV_RATE,
                        "question": question, "answers": [answer]})
    return records
