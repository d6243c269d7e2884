"""Users' own calibration data: a folder of JSONL files in the LLaVA / ShareGPT4V layout.

One conversation per line::

    {"id": "cat-1", "image": "images/cat.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat on a sofa."}]}

`image` is optional (text-only sample) and relative to the folder. Audio-video samples name
`video` (a folder of frames, a `.npy` [T, H, W, 3] or a video file) and/or `audio` (`.wav`, a
`.npy` 16 kHz waveform, or any file PyAV reads), with an optional `fps` (default 2) and the
`<video>` / `<audio>` markers in a turn (see `tampkit/calibration/media.py`). Roles may be
human/gpt or user/assistant. Every malformed line is an error naming file, line and field: silently skipping
calibration data changes the pruned model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from tampkit.core.errors import UsageError
from tampkit.core.types import Sample

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def parse_conversations(raw: Any, where: str) -> list[tuple[str, str]]:
    """LLaVA-style [{"from", "value"}] turns as (role, text) pairs, validated."""
    if not isinstance(raw, list) or not raw:
        raise UsageError("--calibration", f"{where}: field 'conversations' must be a non-empty list")
    turns = []
    for turn in raw:
        if not isinstance(turn, dict) or "value" not in turn or turn.get("from") not in ROLES:
            raise UsageError("--calibration", f"{where}: each turn needs 'from' and 'value'", "from: " + ", ".join(ROLES))
        turns.append((ROLES[turn["from"]], str(turn["value"])))
    return turns


def jsonl_records(file: Path) -> list[tuple[str, dict]]:
    """("<file>:<line>", object) for every non-blank line; a line that is no JSON object is an error."""
    out = []
    for lineno, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError("--calibration", f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise UsageError("--calibration", f"{where}: each line must be a JSON object")
        out.append((where, record))
    return out


def record_sample(record: dict, folder: Path, sample_id: str, turns: list[tuple[str, str]], where: str,
                  source: str) -> Sample:
    """A Sample with the record's image, video and audio read from paths relative to `folder`."""
    from tampkit.calibration.media import read_audio, read_video

    image = video = audio = None
    if record.get("image"):
        path = folder / str(record["image"])
        if not path.is_file():
            raise UsageError("--calibration", f"{where}: field 'image' names a missing file {path}")
        image = Image.open(path).convert("RGB")
    if record.get("video"):
        video = read_video(folder / str(record["video"]), where)
    if record.get("audio"):
        audio = read_audio(folder / str(record["audio"]), where)
    fps = record.get("fps", 2.0)
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise UsageError("--calibration", f"{where}: field 'fps' must be a positive number, got {fps!r}")
    return Sample(sample_id, turns, image, source=source, video=video, audio=audio, fps=float(fps))


def load_jsonl_folder(folder: Path) -> list[Sample]:
    """Every line of every *.jsonl under `folder`, in sorted file order."""
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        from tampkit.calibration.sources import calibration_sources

        raise UsageError("--calibration", f"no *.jsonl files in {folder}", calibration_sources())
    samples: list[Sample] = []
    for file in files:
        for where, record in jsonl_records(file):
            turns = parse_conversations(record.get("conversations"), where)
            lineno = where.rpartition(":")[2]
            samples.append(record_sample(record, folder, str(record.get("id", f"{file.stem}/{lineno}")), turns, where,
                                         source=str(file)))
    if not samples:
        raise UsageError("--calibration", f"{folder} holds *.jsonl files but no samples")
    return samples
