"""tampkit plug-in adapter for VideoLLaMA2 (audio-visual), through the `videollama2` package.

VideoLLaMA2 is no transformers class: its model puts one `<video>` placeholder (id -201) in the
prompt and, inside `prepare_inputs_labels_for_multimodal`, replaces it with the video features
followed by the audio features. tampkit needs what every transformers multimodal class gives it:
`input_ids` in which every feature position holds its modality's id. So this adapter wraps the
model (`VideoLLaMA2ForTamp`): `encode` expands the placeholder into `n_video` copies of -201 and
`n_audio` copies of -202 (VideoLLaMA2's own video and audio ids), and the wrapper's forward collapses
them back, lets VideoLLaMA2 build its input embeddings, and runs its language model on them. The
decoder blocks tampkit prunes are the language model's (`model.layers`); the vision tower, audio
tower and projectors stay dense, as the TAMP spec says.

Written against VideoLLaMA2's public API (`videollama2.model_init`, the returned processor dict,
`videollama2.mm_utils.tokenizer_multimodal_token`, `MODAL_INDEX_MAP`, the model's
`encode_images_or_videos` and `prepare_inputs_labels_for_multimodal`, audio-visual branch). It is
loaded only where `videollama2` imports; tampkit's CI has no VideoLLaMA2, so this file is checked
for syntax there, not run. Use: `pip install -e examples/videollama2_adapter`, then
`tamp prune --model videollama2:DAMO-NLP-SG/VideoLLaMA2.1-7B-AV --calibration avinstruct:FILE ...`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tampkit.core.errors import UsageError
from tampkit.core.types import AUDIO, VIDEO, Sample
from tampkit.models.adapters import Adapter, ModelBundle

PREFIX = "videollama2:"
VIDEO_ID, AUDIO_ID = -201, -202  # videollama2.constants.MODAL_INDEX_MAP["<video>"], ["<audio>"]


class VideoLLaMA2ForTamp(nn.Module):
    """The VideoLLaMA2 model behind an input_ids-with-feature-positions interface."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        # the ids tampkit's default labelling reads (Adapter.modality_token_ids)
        self.config.video_token_id, self.config.audio_token_id = VIDEO_ID, AUDIO_ID

    @property
    def model(self) -> nn.Module:  # the Qwen2/Mistral decoder whose `layers` tampkit prunes
        return self.inner.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None, **kwargs: Any) -> Any:
        if video is None and audio is None:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=use_cache)
        ids = input_ids[0]
        media = (ids == VIDEO_ID) | (ids == AUDIO_ID)
        keep = ~media
        first = media.nonzero()[0, 0]
        keep[first] = True  # one placeholder where the run of feature positions was
        compact = ids[keep].clone()
        compact[compact == AUDIO_ID] = VIDEO_ID
        dtype = next(self.inner.parameters()).dtype  # VideoLLaMA2 runs its towers in the model's dtype
        data = {"video": video[0].to(dtype)} if audio is None else {"video": video[0].to(dtype), "audio": audio[0].to(dtype)}
        _, mask, _, embeds, _ = self.inner.prepare_inputs_labels_for_multimodal(
            compact[None], torch.ones_like(compact[None]), None, None, [(data, "video")])
        if embeds.shape[1] != ids.shape[0]:
            raise RuntimeError(f"VideoLLaMA2 gave {embeds.shape[1]} positions for {ids.shape[0]} expanded ids")
        return self.inner(input_ids=None, inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=use_cache)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        self.inner.save_pretrained(folder, **kwargs)


class VideoLLaMA2Inputs:
    """The `processor` of the bundle: VideoLLaMA2's processor dict and tokenizer, saved with the model."""

    def __init__(self, processor: dict[str, Any], tokenizer: Any) -> None:
        self.processor = processor
        self.tokenizer = tokenizer

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(folder)


class VideoLLaMA2Adapter(Adapter):
    family = "videollama2"
    class_names = ("VideoLLaMA2ForTamp",)
    class_suffixes = ()
    has_vision = True
    default_calibration = "builtin-av"

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def load(self, spec: str, dtype: str = "auto") -> ModelBundle:
        try:
            from videollama2 import model_init  # only here: the plug-in registers without the package
        except ImportError as err:
            raise UsageError("--model", f"{spec} needs the videollama2 package, which is not importable ({err})",
                             "pip install git+https://github.com/DAMO-NLP-SG/VideoLLaMA2@audio_visual") from err
        model, processor, tokenizer = model_init(spec[len(PREFIX):])
        wrapper = VideoLLaMA2ForTamp(model.eval())
        return ModelBundle(model=wrapper, processor=VideoLLaMA2Inputs(processor, tokenizer), adapter=self, name=spec,
                           max_length=int(getattr(model.config, "max_position_embeddings", 4096)))

    def decoder_layers(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return "inner.model.layers", model.inner.model.layers

    def modality_token_ids(self, model: nn.Module) -> dict[int, int]:
        return {VIDEO: VIDEO_ID, AUDIO: AUDIO_ID}

    def encode(self, bundle: ModelBundle, sample: Sample, generation_prompt: bool = False) -> dict[str, torch.Tensor]:
        from videollama2.mm_utils import tokenizer_multimodal_token

        tokenizer, processor = bundle.processor.tokenizer, bundle.processor.processor
        messages = [{"role": "user" if r in ("user", "human") else "assistant",
                     "content": t.replace("<audio>", "").strip()} for r, t in sample.turns]
        if sample.video is not None and not any("<video>" in m["content"] for m in messages):
            messages[0]["content"] = "<video>\n" + messages[0]["content"]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        ids = tokenizer_multimodal_token(prompt, tokenizer, "<video>", return_tensors="pt").long()
        if sample.video is None:
            return {"input_ids": ids[None], "attention_mask": torch.ones_like(ids[None])}
        video, audio = self._media(processor, sample)
        model = bundle.model.inner
        first = next(model.parameters())
        with torch.no_grad():
            v = video.to(first.device, first.dtype)
            n_video = model.encode_images_or_videos([(v, "video")]).shape[1]
            data = {"video": v} if audio is None else {"video": v, "audio": audio.to(first.device, first.dtype)}
            on = ids[None].to(first.device)
            _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(on, torch.ones_like(on), None, None,
                                                                            [(data, "video")])
        n_audio = embeds.shape[1] - (ids.shape[0] - 1) - n_video
        at = int((ids == VIDEO_ID).nonzero()[0, 0])
        expanded = torch.cat([ids[:at], torch.full((n_video,), VIDEO_ID), torch.full((n_audio,), AUDIO_ID), ids[at + 1:]])
        out = {"input_ids": expanded[None], "attention_mask": torch.ones_like(expanded[None]), "video": video[None]}
        if audio is not None:
            out["audio"] = audio[None]
        return out

    @staticmethod
    def _media(processor: dict[str, Any], sample: Sample) -> tuple[torch.Tensor, torch.Tensor | None]:
        """VideoLLaMA2's own preprocessing, fed from files: its processors read paths (`process_video`
        takes a folder of frames, `process_audio_file` a .wav)."""
        from tampkit.calibration.media import write_wav

        with tempfile.TemporaryDirectory() as folder:
            frames = Path(folder) / "frames"
            frames.mkdir()
            for k, frame in enumerate(sample.video):
                frame.save(frames / f"{k:05d}.png")
            video = processor["video"](str(frames))
            audio = None
            if sample.audio is not None:
                write_wav(Path(folder) / "audio.wav", sample.audio)
                audio = processor["audio"](str(Path(folder) / "audio.wav"))
        return video, audio
