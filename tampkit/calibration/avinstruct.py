"""AVInstruct-style calibration (`--calibration avinstruct:PATH`), VideoLLaMA2's audio-visual data.

PATH is a `.json` file holding a list of records, or a `.jsonl` file, of the AVInstruct shape::

    {"video_id": "00005580", "video": "videos/00005580.mp4", "audio": "audio/00005580.wav",
     "conversations": [{"from": "human", "value": "<Q>How many instruments are sounding?<Q>\\n<video>"},
                       {"from": "gpt", "value": "Two instruments are sounding, the violin and the cello."}]}

Paths are relative to PATH's folder. The AVInstruct release points `video`/`audio` at
pre-extracted ImageBind features (`.npy` of shape [tokens, dim]); TAMP needs the model's own
encoders to see the raw clip, so such a record is an error that says so. Without `video`,
`<folder>/videos/<video_id>.<ext>` is looked up (the MUSIC-AVQA download layout); without
`audio`, the video file's own soundtrack is read (PyAV). AVInstruct's `<Q>...<Q>` question
delimiters are kept as they are: they are what the model was tuned on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tampkit.calibration.jsonl import jsonl_records, parse_conversations, record_sample
from tampkit.calibration.media import VIDEO_SUFFIXES, read_audio
from tampkit.core.errors import UsageError
from tampkit.core.types import Sample


def _records(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise UsageError("--calibration", f"avinstruct: file not found: {path}", "avinstruct:FILE.json or FILE.jsonl")
    if path.suffix == ".jsonl":
        return jsonl_records(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError("--calibration", f"{path}: not valid JSON ({err.msg})") from err
    if not isinstance(data, list):
        raise UsageError("--calibration", f"{path}: an AVInstruct .json file holds a list of records")
    return [(f"{path}[{i}]", record) for i, record in enumerate(data)]


def _is_features(path: Path) -> bool:
    return path.suffix == ".npy" and path.is_file() and np.load(path, mmap_mode="r").ndim == 2


def load_avinstruct(location: str) -> list[Sample]:
    """Every record of an AVInstruct-style file as a Sample with its frames and waveform."""
    path = Path(location).expanduser()
    folder = path.parent
    samples = []
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise UsageError("--calibration", f"{where}: each record must be a JSON object")
        record = dict(record)
        for field in ("video", "audio"):
            if record.get(field) and _is_features(folder / str(record[field])):
                raise UsageError("--calibration", f"{where}: field '{field}' points to pre-extracted features "
                                 f"({record[field]}); TAMP needs the raw clip", "a video file, a folder of frames, .wav")
        if not record.get("video") and record.get("video_id"):
            found = [p for p in sorted((folder / "videos").glob(f"{record['video_id']}.*")) if p.suffix.lower() in VIDEO_SUFFIXES]
            if not found:
                raise UsageError("--calibration", f"{where}: no video for video_id {record['video_id']} in {folder / 'videos'}")
            record["video"] = str(found[0].relative_to(folder))
        turns = parse_conversations(record.get("conversations"), where)
        sample = record_sample(record, folder, str(record.get("id", record.get("video_id", where))), turns, where,
                               source="avinstruct")
        if sample.audio is None and record.get("video") and (folder / str(record["video"])).suffix.lower() in VIDEO_SUFFIXES:
            sample.audio = read_audio(folder / str(record["video"]), where)  # the clip's own soundtrack
        samples.append(sample)
    if not samples:
        raise UsageError("--calibration", f"{path} holds no records")
    return samples
