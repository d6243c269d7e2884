"""Qwen2.5-Omni thinker inputs (video, audio, image, text) without transformers' Qwen2_5OmniProcessor.

That processor needs a video processor, which needs torchvision (not installable beside our CPU
torch), and decodes files through backends we do not install. What it computes is simple, so we
compute it here from frames and waveforms already in memory:

- video: frames resized (Qwen2-VL `smart_resize`, one size for the clip), normalised, the frame
  count padded to a multiple of `temporal_patch_size` by repeating the last frame, then cut into
  (t, h, w) patches in the order Qwen2-VL's vision tower expects; grid_t * grid_h * grid_w /
  merge_size**2 `<|VIDEO|>` tokens; `video_second_per_grid` = temporal_patch_size / fps (mRoPE's
  time axis). tests/test_omni.py checks a two-frame still clip against the image processor.
- audio: Whisper log-mel features (numpy only) of the 16 kHz waveform, unpadded;
  `audio_tokens(frames)` `<|AUDIO|>` tokens, as the thinker's audio tower emits.
- image: as Qwen2-VL (`<|IMAGE|>` expanded to the merged patch count).

Each medium sits between its begin/end tokens: `<|vision_bos|>` ... `<|vision_eos|>`,
`<|audio_bos|>` ... `<|audio_eos|>`; audio and video are separate (no `use_audio_in_video`
interleaving), which is how Qwen2.5-Omni reads a video with a separate audio track.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tampkit.core.types import SAMPLE_RATE
from tampkit.models.qwen2vl_inputs import expand_pads

IMAGE_PAD, VIDEO_PAD, AUDIO_PAD = "<|IMAGE|>", "<|VIDEO|>", "<|AUDIO|>"
VISION_BOS, VISION_EOS, AUDIO_BOS, AUDIO_EOS = "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>"
SPECIAL_TOKENS = (VISION_BOS, VISION_EOS, AUDIO_BOS, AUDIO_EOS, IMAGE_PAD, VIDEO_PAD, AUDIO_PAD)


def audio_tokens(frames: int) -> int:
    """Tokens the thinker's audio tower gives for `frames` mel frames (two stride-2 stages)."""
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def video_patches(frames: list[Image.Image], image_processor: Any) -> tuple[torch.Tensor, list[int]]:
    """Flattened (t, h, w) patches of one clip and its [grid_t, grid_h, grid_w]."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = image_processor
    patch, merge, temporal = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    width, height = frames[0].size
    size = ip.size if isinstance(ip.size, dict) else dict(ip.size)
    new_h, new_w = smart_resize(height, width, factor=patch * merge, min_pixels=size["shortest_edge"],
                                max_pixels=size["longest_edge"])
    mean = np.asarray(ip.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(ip.image_std, dtype=np.float32)[:, None, None]
    arrays = []
    for frame in frames:
        resized = frame.convert("RGB").resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        x = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) * np.float32(ip.rescale_factor)
        arrays.append((x - mean) / std)
    while len(arrays) % temporal:
        arrays.append(arrays[-1])
    clip = np.stack(arrays)  # [T, C, H, W]
    grid_t, grid_h, grid_w = len(arrays) // temporal, new_h // patch, new_w // patch
    x = clip.reshape(grid_t, temporal, 3, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, temporal, p, p)
    flat = x.reshape(grid_t * grid_h * grid_w, 3 * temporal * patch * patch)
    return torch.from_numpy(np.ascontiguousarray(flat)), [grid_t, grid_h, grid_w]


class OmniInputsProcessor:
    """Callable like a processor: (text, images, videos, audios, fps) -> thinker inputs.

    `text` holds one `<|IMAGE|>` / `<|VIDEO|>` / `<|AUDIO|>` per medium (in order); each is
    expanded to its feature count.
    """

    image_token, video_token, audio_token = IMAGE_PAD, VIDEO_PAD, AUDIO_PAD

    def __init__(self, image_processor: Any, feature_extractor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer

    def __call__(self, text: list[str], images: list[Any] | None = None, videos: list[list[Any]] | None = None,
                 audios: list[np.ndarray] | None = None, fps: list[float] | None = None,
                 return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        counts: dict[str, list[int]] = {IMAGE_PAD: [], VIDEO_PAD: [], AUDIO_PAD: []}
        merge = self.image_processor.merge_size ** 2
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            out.update(pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"])
            counts[IMAGE_PAD] = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
        if videos:
            patches, grids = zip(*(video_patches(v, self.image_processor) for v in videos))
            rates = list(fps) if fps else [2.0] * len(videos)
            out.update(pixel_values_videos=torch.cat(patches), video_grid_thw=torch.tensor(grids),
                       video_second_per_grid=torch.tensor([self.image_processor.temporal_patch_size / r for r in rates]))
            counts[VIDEO_PAD] = [int(np.prod(g)) // merge for g in grids]
        if audios:
            mel = [self.feature_extractor(np.asarray(a, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                          return_tensors="np")["input_features"][0] for a in audios]
            # Whisper pads every clip to 30 s; keep only the frames the audio really has
            lengths = [max(1, (len(a) + self.feature_extractor.hop_length - 1) // self.feature_extractor.hop_length) for a in audios]
            longest = max(lengths)
            features = np.zeros((len(mel), mel[0].shape[0], longest), dtype=np.float32)
            mask = np.zeros((len(mel), longest), dtype=np.int64)
            for row, (m, n) in enumerate(zip(mel, lengths)):
                features[row, :, :n] = m[:, :n]
                mask[row, :n] = 1
            out.update(input_features=torch.from_numpy(features), feature_attention_mask=torch.from_numpy(mask))
            counts[AUDIO_PAD] = [audio_tokens(n) for n in lengths]
        prompts = [self._expand(t, {k: list(v) for k, v in counts.items()}) for t in text]
        tokens = self.tokenizer(prompts, return_tensors=return_tensors, add_special_tokens=False)
        out.update(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out

    @staticmethod
    def _expand(prompt: str, counts: dict[str, list[int]]) -> str:
        for pad in (IMAGE_PAD, VIDEO_PAD, AUDIO_PAD):
            prompt = expand_pads(prompt, pad, counts[pad])
        return prompt

    def save_pretrained(self, path: str | Path) -> None:
        """One preprocessor_config.json holding both the image processor's and the audio feature
        extractor's fields, as Qwen2.5-Omni checkpoints ship it (each reader takes its own)."""
        import json

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        merged = {**self.feature_extractor.to_dict(), **self.image_processor.to_dict()}
        merged.pop("mel_filters", None)  # derived from the other fields; megabytes of floats
        (folder / "preprocessor_config.json").write_text(json.dumps(merged, indent=2, sort_keys=True, default=str))
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, source: str) -> "OmniInputsProcessor":
        import transformers as tf

        return cls(tf.Qwen2VLImageProcessorPil.from_pretrained(source), tf.WhisperFeatureExtractor.from_pretrained(source),
                   tf.AutoTokenizer.from_pretrained(source))
