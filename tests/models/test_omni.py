"""Audio-video-language models: the Qwen2.5-Omni thinker adapter, its inputs, the built-in AV
calibration, local AV files, the six DAS terms and every method end to end on tiny-qwen2.5-omni."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tampkit.calibration.av_builtin import FRAMES, builtin_av_samples, make_clip
from tampkit.cli import main
from tampkit.core.diversity import cosine_gram, diversity, similarity_terms
from tampkit.core.errors import UsageError
from tampkit.models import load_model
from tampkit.core.types import AUDIO, SAMPLE_RATE, TEXT, VIDEO, Sample
from tampkit.models.omni_inputs import audio_tokens, video_patches


@pytest.fixture(scope="module")
def omni():
    return load_model("tiny-qwen2.5-omni")


# --- inputs ---------------------------------------------------------------------------------------


def test_a_still_two_frame_clip_is_patched_like_the_image_processor(omni) -> None:
    """Qwen2-VL repeats an image over the temporal patch; a clip of that image twice must give
    exactly those patches (same resize, normalisation and patch order)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    patches, grid = video_patches([image, image], omni.processor.image_processor)
    reference = omni.processor.image_processor(images=[image], return_tensors="pt")
    assert grid == reference["image_grid_thw"][0].tolist()
    assert torch.allclose(patches, reference["pixel_values"], atol=1e-5)


def test_omni_encode_labels_every_video_and_audio_feature(omni) -> None:
    clip = make_clip(5)
    sample = Sample("c", clip.turns(), video=clip.frames(), audio=clip.audio(), fps=2.0)
    encoded = omni.adapter.encode(omni, sample)
    labels = omni.adapter.modality_labels(omni.model, encoded["input_ids"])
    grid = encoded["video_grid_thw"][0].tolist()
    assert grid[0] == math.ceil(FRAMES / 2)
    assert int((labels == VIDEO).sum()) == grid[0] * grid[1] * grid[2] // 4  # 2x2 merge
    mel_frames = int(encoded["feature_attention_mask"].sum())
    assert mel_frames == math.ceil(SAMPLE_RATE * 1.0 / omni.processor.feature_extractor.hop_length)
    assert int((labels == AUDIO).sum()) == audio_tokens(mel_frames)
    tokens = omni.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    video_at = [i for i, t in enumerate(tokens) if t == "<|VIDEO|>"]
    assert tokens[video_at[0] - 1] == "<|vision_bos|>" and tokens[video_at[-1] + 1] == "<|vision_eos|>"
    assert labels[video_at[0] - 1] == TEXT  # the begin/end markers are text
    logits = omni.model(**encoded).logits
    assert logits.shape[1] == encoded["input_ids"].shape[1] and torch.isfinite(logits).all()


def test_markers_place_media_and_missing_markers_go_first(omni) -> None:
    clip = make_clip(1)
    marked = Sample("m", [("user", "listen <audio> then watch <video> ok")], video=clip.frames(), audio=clip.audio())
    text = omni.adapter.render(omni, marked, True)
    assert text.index("<|AUDIO|>") < text.index("<|VIDEO|>") < text.index("ok")
    unmarked = Sample("u", [("user", "what happens?")], video=clip.frames(), audio=clip.audio())
    text = omni.adapter.render(omni, unmarked, True)
    assert text.index("<|VIDEO|>") < text.index("<|AUDIO|>") < text.index("what happens?")


# --- the built-in AV set: answers right by construction ------------------------------------------


def _dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_builtin_av_answers_follow_from_the_media() -> None:
    samples = builtin_av_samples(48)
    assert [s.id for s in samples] == [s.id for s in builtin_av_samples(48)]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(samples, builtin_av_samples(48)))
    kinds = set()
    for index, sample in enumerate(samples):
        clip = make_clip(index)
        kinds.add(clip.sound)
        answers = dict((q.split("\n")[-1], a) for (_, q), (_, a) in zip(sample.turns[::2], sample.turns[1::2]))
        quarter = len(sample.audio) // 4
        if clip.sound in ("rising", "falling"):
            start, end = _dominant_hz(sample.audio[:quarter]), _dominant_hz(sample.audio[-quarter:])
            assert (end > start) == (clip.sound == "rising")
        assert answers["is the sound rising in pitch?"] == ("Yes." if clip.sound == "rising" else "No.")
        if clip.sound in ("beeps", "speech"):
            loud = np.convolve(np.abs(sample.audio) > 1e-3, np.ones(80), mode="same") > 0
            bursts = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])
            assert bursts == clip.beeps
            assert answers["how many sounds are there?"] == f"There are {clip.beeps}."
        # the object's centre moves the way the answer says
        centres = []
        for frame in sample.video:
            ys, xs = np.nonzero(np.asarray(frame).sum(2) < 600)
            centres.append((xs.mean(), ys.mean()))
        dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
        moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert answers[f"which way does the {clip.colour} {clip.shape} move?"] == f"It moves {moved}."
    assert len(kinds) >= 5


# --- local files: JSONL and AVInstruct ------------------------------------------------------------


def _write_clip(folder: Path, index: int) -> tuple[str, str]:
    from tampkit.calibration.media import write_wav

    clip = make_clip(index)
    frames = folder / f"clip{index}"
    frames.mkdir()
    for k, frame in enumerate(clip.frames()):
        frame.save(frames / f"{k:03d}.png")
    write_wav(folder / f"clip{index}.wav", clip.audio())
    return frames.name, f"clip{index}.wav"


def test_jsonl_records_with_video_frames_and_wav(tmp_path: Path) -> None:
    from tampkit.calibration.sources import load_calibration

    lines = []
    for index in range(3):
        video, audio = _write_clip(tmp_path, index)
        lines.append(json.dumps({"id": f"c{index}", "video": video, "audio": audio, "fps": 2,
                                 "conversations": [{"from": "human", "value": "<video>\n<audio>\nwhat do you hear?"},
                                                   {"from": "gpt", "value": "a tone"}]}))
    np.save(tmp_path / "frames.npy", np.stack([np.asarray(f) for f in make_clip(9).frames()]))
    lines.append(json.dumps({"id": "npy", "video": "frames.npy", "conversations": [{"from": "human", "value": "hi"}]}))
    (tmp_path / "av.jsonl").write_text("\n".join(lines) + "\n")
    samples = {s.id: s for s in load_calibration(str(tmp_path), 4, 0)}
    original = make_clip(0)
    assert [np.asarray(f).tolist() for f in samples["c0"].video] == [np.asarray(f).tolist() for f in original.frames()]
    assert np.abs(samples["c0"].audio - original.audio()).max() < 1e-4  # 16-bit PCM round trip
    assert samples["npy"].video is not None and samples["npy"].audio is None


def test_avinstruct_file_layout_and_its_errors(tmp_path: Path) -> None:
    from tampkit.calibration.sources import load_calibration

    video, audio = _write_clip(tmp_path, 2)
    record = {"video_id": "00005580", "video": video, "audio": audio,
              "conversations": [{"from": "human", "value": "Summarize the video to help answer:\n<Q>Is it rising?<Q>\n<video>"},
                                {"from": "gpt", "value": "No."}]}
    (tmp_path / "avinstruct.json").write_text(json.dumps([record, {**record, "video_id": "2"}]))
    samples = load_calibration(f"avinstruct:{tmp_path / 'avinstruct.json'}", 2, 0)
    assert {s.id for s in samples} == {"00005580", "2"} and all(s.video and s.audio is not None for s in samples)
    np.save(tmp_path / "feats.npy", np.zeros((10, 1024), dtype=np.float32))
    (tmp_path / "features.json").write_text(json.dumps([{**record, "video": "feats.npy"}]))
    with pytest.raises(UsageError, match="pre-extracted features"):
        load_calibration(f"avinstruct:{tmp_path / 'features.json'}", 1, 0)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "77.mp4").write_bytes(b"not decoded here")
    (tmp_path / "byid.json").write_text(json.dumps([{"video_id": "77", "conversations": record["conversations"]}]))
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="needs PyAV"):
            load_calibration(f"avinstruct:{tmp_path / 'byid.json'}", 1, 0)


# --- DAS: six terms by hand -------------------------------------------------------------------


def test_six_das_terms_by_hand() -> None:
    """video e1, e2 (cos 0); audio e1, e1 (cos 1); text e2, -e2 (cos -1: no positive pair).
    cross video-audio: [1,1],[0,0] -> 2/4; text-video: [0,1],[0,-1] -> 0; text-audio: 0."""
    y = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, -1]])
    labels = torch.tensor([VIDEO, VIDEO, AUDIO, AUDIO, TEXT, TEXT])
    terms = similarity_terms(cosine_gram(y), labels, positive_only=True)
    assert terms == pytest.approx({"video": 0.0, "audio": 1.0, "text": 0.0, "text-video": 0.0, "text-audio": 0.0,
                                   "video-audio": 0.5})
    assert similarity_terms(cosine_gram(y), labels, positive_only=False)["text"] == pytest.approx(-1.0)
    assert diversity(terms) == pytest.approx(6 - 1.5)


# --- every method end to end ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tamp", "das", "amia", "wanda", "magnitude", "sparsegpt", "owl"])
def test_tiny_omni_prunes_end_to_end(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if method == "tamp":  # the one-liner: no --calibration (the family's builtin-av), no --out
        monkeypatch.chdir(tmp_path)
        extra, out = [], tmp_path / "out" / "tiny-qwen2.5-omni-tamp-0.5"
    else:
        extra, out = ["--calibration", "builtin-av", "--out", str(tmp_path / method)], tmp_path / method
    assert main(["prune", "--model", "tiny-qwen2.5-omni", "--method", method, "--sparsity", "0.5", *extra,
                 "--nsamples", "6", "--no-progress"]) == 0
    report = json.loads((out / "tamp_report.json").read_text())
    assert report["family"] == "qwen2.5-omni"
    if method != "magnitude":  # the one method that reads no data
        assert report["calibration"] == "builtin-av" and report["video_samples"] == report["audio_samples"] == 6
    total = sum(m["shape"][0] * m["shape"][1] for m in report["matrices"])
    assert abs(report["achieved_sparsity"] - 0.5) <= 1 / total + 1e-9
    if method in ("tamp", "das"):
        for row in report["matrices"]:
            assert set(row["similarity_terms"]) == {"text", "video", "audio", "text-video", "text-audio", "video-audio"}
        assert (out / "diversity_by_layer.png").stat().st_size > 1000
    if method in ("tamp", "amia"):
        for block in report["blocks"]:
            assert set(block["amia_selected_tokens"]) == {"text", "video", "audio"}
        assert (out / "amia_tokens_by_modality.png").stat().st_size > 1000
    pruned = load_model(str(out))
    sample = builtin_av_samples(1)[0]
    assert torch.isfinite(pruned.model(**pruned.adapter.encode(pruned, sample)).logits).all()


def test_a_full_omni_checkpoint_loads_its_thinker(omni, tmp_path: Path) -> None:
    """Qwen2.5-Omni checkpoints name the whole model (thinker + talker); we load and prune the thinker."""
    folder = tmp_path / "omni"
    omni.model.save_pretrained(folder)
    omni.processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen2_5OmniForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(folder))
    assert type(loaded.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert loaded.adapter.family == "qwen2.5-omni"
    # ...with the weights that were saved, bit for bit (none left at a fresh initialisation)
    saved, got = omni.model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == got.keys()
    for name, tensor in saved.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
