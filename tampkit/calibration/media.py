"""Reading local video and audio for calibration records, with only what we install.

Video, in order of preference:
- a folder of frame images (sorted by name; png/jpg/...), read with Pillow;
- a `.npy` array of frames [T, H, W, 3] uint8;
- a video file (`.mp4`, `.avi`, `.mkv`, `.webm`, `.mov`): decoded with PyAV (`pip install av`)
  when it is installed, otherwise a clear error that says to install it or to extract frames.
Frames are sampled uniformly to at most `max_frames`.

Audio, resampled to 16 kHz mono float:
- `.wav` (PCM 8/16/32-bit), read with the standard library;
- `.npy` waveform already at 16 kHz;
- any other file (or a video's own soundtrack): PyAV when installed, else a clear error.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

from tampkit.core.errors import UsageError
from tampkit.core.types import SAMPLE_RATE
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def _uniform(count: int, keep: int) -> list[int]:
    if count <= keep:
        return list(range(count))
    return [round(i * (count - 1) / (keep - 1)) for i in range(keep)] if keep > 1 else [0]


def read_video(path: Path, where: str, max_frames: int = 8) -> list[Image.Image]:
    """Frames of a local clip (see the module docstring for the accepted forms)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise UsageError("--calibration", f"{where}: video folder {path} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        return [Image.open(files[i]).convert("RGB") for i in _uniform(len(files), max_frames)]
    if not path.is_file():
        raise UsageError("--calibration", f"{where}: field 'video' names a missing file {path}")
    if path.suffix == ".npy":
        frames = np.load(path)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UsageError("--calibration", f"{where}: {path} must hold frames [T, H, W, 3], got shape {frames.shape}")
        return [Image.fromarray(frames[i].astype(np.uint8)) for i in _uniform(len(frames), max_frames)]
    if path.suffix.lower() in VIDEO_SUFFIXES:
        av = _pyav(where, path)
        with av.open(str(path)) as container:
            decoded = [frame.to_image().convert("RGB") for frame in container.decode(video=0)]
        if not decoded:
            raise UsageError("--calibration", f"{where}: {path} has no video frames")
        return [decoded[i] for i in _uniform(len(decoded), max_frames)]
    raise UsageError("--calibration", f"{where}: unsupported video {path.name}",
                     ["a folder of frames", ".npy [T,H,W,3]", *VIDEO_SUFFIXES])


def read_audio(path: Path, where: str) -> np.ndarray:
    """16 kHz mono float32 waveform of a local audio file."""
    if not path.is_file():
        raise UsageError("--calibration", f"{where}: field 'audio' names a missing file {path}")
    if path.suffix == ".npy":
        return np.asarray(np.load(path), dtype=np.float32).reshape(-1)
    if path.suffix.lower() == ".wav":
        with wave.open(str(path)) as handle:
            width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
            raw = handle.readframes(handle.getnframes())
        if width not in (1, 2, 4):
            raise UsageError("--calibration", f"{where}: {path} has {8 * width}-bit samples", "8, 16 or 32-bit PCM")
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
        data = (data - 128.0) / 128.0 if width == 1 else data / float(np.iinfo(dtype).max)
        return resample(data.reshape(-1, channels).mean(1), rate)
    av = _pyav(where, path)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise UsageError("--calibration", f"{where}: {path} has no audio track")
        chunks, rate = [], container.streams.audio[0].rate
        for frame in container.decode(audio=0):
            array = frame.to_ndarray().astype(np.float32)
            chunks.append(array.mean(0) if array.ndim == 2 else array)
    return resample(np.concatenate(chunks), rate)


def resample(data: np.ndarray, rate: int) -> np.ndarray:
    """Linear-interpolation resampling to 16 kHz (calibration needs the content, not hi-fi)."""
    if rate == SAMPLE_RATE:
        return data.astype(np.float32)
    count = max(1, round(len(data) * SAMPLE_RATE / rate))
    return np.interp(np.linspace(0, len(data) - 1, count), np.arange(len(data)), data).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono .wav (for tests and for users exporting the built-in clips)."""
    pcm = (np.clip(data, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def _pyav(where: str, path: Path):
    try:
        import av
    except ImportError as err:
        raise UsageError("--calibration", f"{where}: decoding {path.name} needs PyAV, which is not installed",
                         "pip install av, or give a folder of frames / .npy frames and a .wav") from err
    return av
