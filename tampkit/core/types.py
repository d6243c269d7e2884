"""Types every layer shares: the modality codes, a conversation sample, what a hook knows about the
sample it sees, and the audio rate. Imports only the standard library and torch, so anything may
import it (models, calibration, methods, the pure math) without importing one another."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tampkit.core.errors import UsageError

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


@dataclass(frozen=True)
class Structure:
    """Unstructured (any pattern) or N:M (N zeros in each group of M consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


STRUCTURES = ("unstructured", "2:4", "4:8")


def parse_structure(text: str, sparsity: float) -> Structure:
    """'unstructured' or 'N:M'; N:M fixes the sparsity at N/M, so it must equal 0.5 here."""
    if text == "unstructured":
        return Structure()
    if text not in STRUCTURES:
        raise UsageError("--structure", f"unknown structure '{text}'", STRUCTURES)
    n, m = (int(v) for v in text.split(":"))
    if abs(sparsity - n / m) > 1e-12:
        raise UsageError("--sparsity", f"{text} prunes exactly {n / m:g}, got {sparsity:g}", f"{n / m:g} with --structure {text}")
    return Structure(n, m)
