"""Types every layer shares: the modality codes, a conversation sample, what a hook knows about the
sample it sees, and the audio rate. Imports only the standard library and torch, so anything may
import it (models, calibration, methods, the pure math) without importing one another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Modality codes used in every label tensor: index into this tuple.
MODALITIES: tuple[str, ...] = ("text", "image", "video", "audio")
TEXT, IMAGE, VIDEO, AUDIO = range(4)

#: Audio sample rate (Hz) of every waveform a Sample carries and the models read.
SAMPLE_RATE = 16000


@dataclass
class Sample:
    """One calibration or evaluation conversation: LLaVA-style turns with optional media.

    `turns` alternate user/assistant; a user turn may contain the literal markers ``<image>``,
    ``<video>`` and ``<audio>`` where each medium goes (LLaVA / ShareGPT4V / VideoLLaMA2
    convention). A medium without a marker goes first, video before audio before text.
    """

    id: str
    turns: list[tuple[str, str]]
    image: Any = None  # PIL.Image.Image or None
    source: str = "builtin"
    video: Any = None  # list of PIL.Image.Image frames, or None
    audio: Any = None  # 1-D float waveform at 16 kHz (numpy), or None
    fps: float = 2.0  # frames per second of `video`

    def media(self) -> list[str]:
        """The kinds of media this sample carries, in their default order."""
        return [kind for kind, value in (("image", self.image), ("video", self.video), ("audio", self.audio))
                if value is not None]


@dataclass
class SampleContext:
    """What a hook knows about the sample being run: its index and per-token modality labels."""

    index: int
    labels: torch.Tensor
