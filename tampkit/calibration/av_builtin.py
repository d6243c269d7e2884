"""Built-in audio-video calibration (`--calibration builtin-av`): short generated clips with sound.

Clip i is drawn from `random.Random(f"av:{i}")`: 4 frames at 2 fps of one coloured shape moving
left, right, up or down across a 56 px plain background, and 1 s of 16 kHz audio of one kind:

- a tone gliding up or down in pitch ("rising" / "falling"),
- a steady tone, a three-note chord,
- 1-4 short beeps, or noise bursts (spoken-like: band-limited noise with a syllable envelope).

Each sample is a conversation about that clip whose answers follow from how it was made ("is the
sound rising in pitch?", "how many beeps are there?", "which way does the red circle move?"), in
the layout of AVInstruct (`<video>` and `<audio>` markers in the first user turn). Like the
image set, it exercises every code path offline; it is no stand-in for AVInstruct's statistics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from tampkit.core.types import SAMPLE_RATE, Sample

SIZE = 56
FRAMES = 4
FPS = 2.0
SECONDS = 1.0
POOL = 256
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 200, 20)}
SHAPES = ("circle", "square")
MOTIONS = ("left", "right", "up", "down")
SOUNDS = ("rising", "falling", "steady", "chord", "beeps", "speech")


@dataclass(frozen=True)
class Clip:
    index: int
    colour: str
    shape: str
    motion: str
    sound: str
    pitch: float  # Hz: start of a glide, the steady tone, the chord's root, the beeps' tone
    beeps: int  # beeps or noise bursts; 0 for the other sounds

    def frames(self) -> list[Image.Image]:
        """The shape moves 8 px per frame in `motion`'s direction from a centred start."""
        step = {"left": (-8, 0), "right": (8, 0), "up": (0, -8), "down": (0, 8)}[self.motion]
        start = SIZE // 2 - step[0] * (FRAMES - 1) // 2, SIZE // 2 - step[1] * (FRAMES - 1) // 2
        out = []
        for k in range(FRAMES):
            image = Image.new("RGB", (SIZE, SIZE), (235, 235, 225))
            x, y = start[0] + k * step[0], start[1] + k * step[1]
            box = (x - 7, y - 7, x + 7, y + 7)
            draw = ImageDraw.Draw(image)
            (draw.ellipse if self.shape == "circle" else draw.rectangle)(box, fill=COLOURS[self.colour])
            out.append(image)
        return out

    def audio(self) -> np.ndarray:
        t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
        if self.sound in ("rising", "falling"):
            end = self.pitch * (2.0 if self.sound == "rising" else 0.5)
            frequency = self.pitch + (end - self.pitch) * t / SECONDS
            wave = np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE)
        elif self.sound == "steady":
            wave = np.sin(2 * np.pi * self.pitch * t)
        elif self.sound == "chord":  # major triad
            wave = sum(np.sin(2 * np.pi * self.pitch * r * t) for r in (1.0, 1.25, 1.5)) / 3
        else:
            slots = np.floor(t * 2 * self.beeps / SECONDS).astype(int)
            envelope = ((slots % 2) == 0).astype(np.float64)  # on, off, on, ... : `beeps` bursts
            if self.sound == "beeps":
                wave = envelope * np.sin(2 * np.pi * self.pitch * t)
            else:
                noise = np.random.default_rng(self.index).standard_normal(len(t))
                smooth = np.convolve(noise, np.ones(8) / 8, mode="same")  # low-passed: voice-like band
                wave = envelope * np.sin(np.pi * (t * 2 * self.beeps % 1)) * smooth
        return (0.5 * wave / max(float(np.abs(wave).max()), 1e-6)).astype(np.float32)

    def turns(self) -> list[tuple[str, str]]:
        name = f"{self.colour} {self.shape}"
        sound = {"rising": "a tone rising in pitch", "falling": "a tone falling in pitch", "steady": "one steady tone",
                 "chord": "a chord of three notes", "beeps": f"{self.beeps} short beeps",
                 "speech": f"{self.beeps} bursts of speech-like noise"}[self.sound]
        questions = [
            ("is the sound rising in pitch?", "Yes." if self.sound == "rising" else "No."),
            (f"which way does the {name} move?", f"It moves {self.motion}."),
            ("what do you hear?", f"I hear {sound}."),
        ]
        if self.sound in ("beeps", "speech"):
            questions.append(("how many sounds are there?", f"There are {self.beeps}."))
        order = random.Random(f"av-order:{self.index}").sample(questions, k=len(questions))
        turns: list[tuple[str, str]] = []
        for k, (question, answer) in enumerate(order):
            turns += [("user", ("<video>\n<audio>\n" if k == 0 else "") + question), ("assistant", answer)]
        return turns


def make_clip(index: int) -> Clip:
    rng = random.Random(f"av:{index}")
    sound = rng.choice(SOUNDS)
    return Clip(index=index, colour=rng.choice(list(COLOURS)), shape=rng.choice(SHAPES), motion=rng.choice(MOTIONS),
                sound=sound, pitch=rng.choice((220.0, 330.0, 440.0, 660.0)),
                beeps=rng.randint(1, 4) if sound in ("beeps", "speech") else 0)


def builtin_av_samples(count: int = POOL) -> list[Sample]:
    """The pool `select_samples` draws from; media are generated here (a few ms per clip)."""
    samples = []
    for index in range(count):
        clip = make_clip(index)
        samples.append(Sample(f"av-{index:03d}", clip.turns(), video=clip.frames(), audio=clip.audio(), fps=FPS,
                              source="builtin-av"))
    return samples
