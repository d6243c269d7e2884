"""`TampkitLMM`: an lmms-eval model over a tampkit ModelBundle (a pruned folder, an alias, or a
bundle already in memory), using the family adapter's prompt rendering and media handling.

Batch size 1, greedy decoding (lmms-eval's usual evaluation setting); `loglikelihood` returns
(sum log p(continuation | context, media), whether greedy decoding would produce it).

Media follow lmms-eval's convention (see its `qwen2_5_omni` model): `doc_to_visual` gives PIL
images, videos as file paths (a video file, a folder of frames or a `.npy` [T, H, W, 3]) and audio
as `{"array", "sampling_rate"}` records (or an audio file path). Every one of them reaches the
adapter, or the request fails with one line naming the task, the doc, the medium and the model
family: an input dropped silently would score the model on a question it never saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from tampkit.calibration.media import FRAME_SUFFIXES, VIDEO_SUFFIXES, read_audio, read_video, resample
from tampkit.core.devices import resolve_device
from tampkit.core.errors import UsageError
from tampkit.evaluation.qa import continuation_logprobs, greedy_answer
from tampkit.models import load_model
from tampkit.core.types import Sample
from tampkit.models.adapters import ModelBundle

#: Media kinds in the order a Sample carries them; a Sample holds at most one of each.
MEDIA: tuple[str, ...] = ("image", "video", "audio")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus")


def accepted_media(bundle: ModelBundle) -> set[str]:
    """The media kinds the bundle's family reads, asked of its adapter: the markers `placeholders`
    fills for a sample that carries every medium ("for each medium ... the family reads"), so a
    plug-in adapter declares what it takes the same way it renders prompts."""
    adapter = bundle.adapter
    image = Image.new("RGB", (28, 28))
    probe = Sample("probe", [("user", "")], image, video=[image, image],
                   audio=np.zeros(1600, dtype=np.float32))
    fills = adapter.placeholders(bundle, probe, bool(adapter.has_vision))
    return {kind for kind in MEDIA if f"<{kind}>" in fills}


def media_kind(visual: Any) -> str | None:
    """The kind (image, video or audio) of one lmms-eval visual; None for one we do not know, which
    the caller turns into an error rather than skipping it."""
    if isinstance(visual, Image.Image):
        return "image"
    if isinstance(visual, dict) and "array" in visual and "sampling_rate" in visual:
        return "audio"
    if callable(getattr(visual, "get_all_samples", None)):  # datasets' torchcodec AudioDecoder
        return "audio"
    if isinstance(visual, (str, Path)):
        path = Path(visual)
        suffix = path.suffix.lower()
        if path.is_dir() or suffix in VIDEO_SUFFIXES:
            return "video"
        if suffix in AUDIO_SUFFIXES:
            return "audio"
        if suffix in FRAME_SUFFIXES:
            return "image"
        if suffix == ".npy" and path.is_file():  # frames [T, H, W, 3] or a 16 kHz waveform
            return "video" if np.load(path, mmap_mode="r").ndim == 4 else "audio"
    return None


def _flatten(visuals: Iterable[Any]) -> list[Any]:
    """doc_to_visual may nest lists (several images, several audio records); None means no medium."""
    out: list[Any] = []
    for visual in visuals:
        if isinstance(visual, (list, tuple)):
            out += _flatten(visual)
        elif visual is not None:
            out.append(visual)
    return out


def _waveform(record: Any) -> np.ndarray:
    """An lmms-eval audio record as a mono float waveform at the Sample's 16 kHz."""
    data = np.asarray(record["array"], dtype=np.float32)
    if data.ndim == 2:  # (channels, samples) as datasets and librosa give it, or (samples, channels)
        data = data.mean(axis=0 if data.shape[0] <= data.shape[1] else 1)
    return resample(data.reshape(-1), int(record["sampling_rate"]))


def _where(task: str, doc_id: int) -> str:
    """How an error names the request (lmms-eval shows no traceback per task, so this is all one sees)."""
    return f"lmms-eval task '{task}' doc {doc_id}"


class TampkitLMM(lmms):
    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str = "auto", batch_size: int | str = 1,
                 max_new_tokens: int = 32, bundle: ModelBundle | None = None, **_ignored: Any) -> None:
        super().__init__()
        if bundle is None and not pretrained:
            raise ValueError("tampkit: give model_args pretrained=<alias or folder>, or a bundle in memory")
        self.bundle = bundle if bundle is not None else load_model(str(pretrained))
        self.device = resolve_device(str(device))
        self.bundle.model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.media = accepted_media(self.bundle)  # what the family reads; anything else fails loudly

    # -- helpers --------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _sample(self, context: str, visuals: list, where: str) -> Sample:
        """The request as one Sample carrying every visual, or a one-line ValueError naming what
        the family cannot take. Media go before the text unless the context marks their place."""
        family, taken = self.bundle.adapter.family, self.media
        kinds: dict[str, list[Any]] = {kind: [] for kind in MEDIA}
        for visual in _flatten(visuals):
            kind = media_kind(visual)
            if kind is None:
                raise ValueError(f"{where}: a visual of type {type(visual).__name__} ({str(visual)[:80]!r}) is no "
                                 f"image, video or audio the {family} model can read")
            kinds[kind].append(visual)
        for kind, values in kinds.items():
            if values and kind not in taken:
                raise ValueError(f"{where}: the {family} model cannot take {kind} (it takes "
                                 f"{', '.join(sorted(taken)) or 'text only'}); refusing to drop the request's {kind}")
            if len(values) > 1:
                raise ValueError(f"{where}: {len(values)} {kind}s in one request, but the {family} model takes one "
                                 f"{kind} per request; refusing to drop any")
        image, video, audio = (values[0] if values else None for values in kinds.values())
        try:
            if isinstance(image, (str, Path)):
                image = Image.open(image)
            if video is not None:
                video = read_video(Path(video), where)
            if isinstance(audio, (str, Path)):
                audio = read_audio(Path(audio), where)
            elif audio is not None:
                audio = _waveform(audio)
        except UsageError as err:  # media.py words its errors for --calibration; keep the message
            raise ValueError(str(err).removeprefix(f"{err.field}: ")) from None
        return Sample(where, [("user", context)], image.convert("RGB") if image is not None else None,
                      source="lmms-eval", video=video, audio=audio)

    def _prompt(self, context: str, visuals: list, where: str) -> dict[str, torch.Tensor]:
        sample = self._sample(context, visuals, where)
        return self.bundle.adapter.encode(self.bundle, sample, generation_prompt=True)

    def _visuals(self, doc_to_visual: Any, doc: Any) -> list:
        if doc_to_visual is None:
            return []
        return _flatten(doc_to_visual(doc) or [])

    def _generate(self, context: str, visuals: list, gen_kwargs: dict[str, Any], where: str) -> str:
        new = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
        text = greedy_answer(self.bundle, self._prompt(context, visuals, where), new, self.device)
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        return text

    # -- the lmms interface ---------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="tampkit loglikelihood", disable=len(requests) < 8):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            prompt = self._prompt(context, self._visuals(doc_to_visual, doc), _where(task, doc_id))
            picked, is_greedy = continuation_logprobs(self.bundle, prompt, continuation, self.device)
            results.append((float(picked.sum()), is_greedy))
        return results

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results = []
        for request in tqdm(requests, desc="tampkit generate", disable=len(requests) < 8):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, self._doc(task, split, doc_id))
            results.append(self._generate(context, visuals, dict(gen_kwargs or {}), _where(task, doc_id)))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """Rounds until the task's doc_to_text says stop; per request, the answer of every round."""
        results = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            visuals = self._visuals(doc_to_visual, doc)
            outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx:
                    visuals, context, terminal, outputs, info = doc_to_text(
                        doc, previous_output=outputs, round_idx=round_idx, previous_round_info=info)
                    outputs = list(outputs)
                    if terminal:
                        break
                kwargs = {k: v for k, v in dict(gen_kwargs or {}).items() if k != "until"}
                outputs.append(self._generate(context, _flatten(visuals or []), kwargs,
                                              f"{_where(task, doc_id)} round {round_idx}"))
                round_idx += 1
            results.append(tuple(outputs))
        return results
