"""The official TAMP calibration data: the ShareGPT4V part of lmms-lab/LLaVA-NeXT-Data.

Columns: id (str), conversations (list of {from, value}), data_source (str), image (Image).
From the hub the dataset is streamed (it is ~90 GB) and shuffled in a buffer with the seed; a local
copy (parquet files of the same schema) is read whole and sampled exactly like the other sources.
"""

from __future__ import annotations

import random
from pathlib import Path

from tampkit.calibration.jsonl import parse_conversations
from tampkit.core.errors import UsageError
from tampkit.core.types import Sample

HUB_ID = "lmms-lab/LLaVA-NeXT-Data"
SUBSET = "sharegpt4v"


def _to_sample(row: dict) -> Sample:
    image = row.get("image")
    return Sample(str(row["id"]), parse_conversations(row["conversations"], f"row {row['id']}"),
                  image.convert("RGB") if image is not None else None, source=row.get("data_source", SUBSET))


def _is_subset(row: dict) -> bool:
    return SUBSET in str(row.get("data_source", "")).lower()


def load_sharegpt4v(location: str | None, nsamples: int, seed: int) -> list[Sample]:
    """`nsamples` ShareGPT4V conversations from a local parquet file/folder or the hub."""
    import datasets

    if location and Path(location).exists():
        path = Path(location)
        files = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else [str(path)]
        if not files:
            raise UsageError("--calibration", f"no parquet files in {location}")
        table = datasets.load_dataset("parquet", data_files=files, split="train")
        keep = [i for i, source in enumerate(table["data_source"]) if SUBSET in str(source).lower()]
        if len(keep) < nsamples:
            raise UsageError("--nsamples", f"{nsamples} requested but {location} has {len(keep)} {SUBSET} rows")
        chosen = sorted(random.Random(seed).sample(keep, nsamples))
        return [_to_sample(table[i]) for i in chosen]
    if location:
        raise UsageError("--calibration", f"sharegpt4v path not found: {location}")
    try:
        stream = datasets.load_dataset(HUB_ID, split="train", streaming=True)
        rows = stream.filter(_is_subset).shuffle(seed=seed, buffer_size=2000).take(nsamples)
        return [_to_sample(row) for row in rows]
    except (OSError, ConnectionError) as err:
        raise UsageError("--calibration", f"cannot reach {HUB_ID} (offline?); pass sharegpt4v:PATH to a local copy") from err
