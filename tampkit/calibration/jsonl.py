"""Users' own calibration data: a folder of JSONL files in the LLaVA / ShareGPT4V layout.

One conversation per line::

    {"id": "cat-1", "image": "images/cat.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat on a sofa."}]}

`image` is optional (text-only sample) and relative to the folder. Roles may be human/gpt or
user/assistant. Every malformed line is an error naming file, line and field: silently skipping
calibration data changes the pruned model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from tampkit.errors import UsageError
from tampkit.models.adapters import Sample

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


def load_jsonl_folder(folder: Path) -> list[Sample]:
    """Every line of every *.jsonl under `folder`, in sorted file order."""
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        raise UsageError("--calibration", f"no *.jsonl files in {folder}", "builtin, builtin-text, sharegpt4v[:PATH], a folder of *.jsonl")
    samples: list[Sample] = []
    for file in files:
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
            turns = parse_conversations(record.get("conversations"), where)
            image = None
            if record.get("image"):
                path = folder / str(record["image"])
                if not path.is_file():
                    raise UsageError("--calibration", f"{where}: field 'image' names a missing file {path}")
                image = Image.open(path).convert("RGB")
            samples.append(Sample(str(record.get("id", f"{file.stem}/{lineno}")), turns, image, source=str(file)))
    if not samples:
        raise UsageError("--calibration", f"{folder} holds *.jsonl files but no samples")
    return samples
