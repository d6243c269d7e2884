"""Writing results: atomically (temp name, then rename), and reading back what was written.

A crashed or rejected run never leaves a half-written output directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy

from tampkit.core.masks import pack_mask, unpack_mask
from tampkit.models.adapters import _NON_DECODER_HINTS

MASKS_FILE = "masks.safetensors"
REPORT_FILE = "tamp_report.json"


@contextmanager
def atomic_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it replaces `out`, on error it vanishes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(out)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def temp_beside(path: Path) -> Path:
    """A temp name beside `path`, unique per process and thread: concurrent writers of one file
    never write into each other's temp file, and the last rename wins whole."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def write_json(path: Path, data: Any) -> None:
    """JSON via a temp file and rename."""
    tmp = temp_beside(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    """Bit-packed masks (uint8, 8 weights a byte), shapes in the metadata."""
    arrays = {name: pack_mask(mask) for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    save_numpy(arrays, str(path), metadata={"shapes": json.dumps(shapes), "true_means": "pruned"})


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "np") as handle:
        shapes = json.loads(handle.metadata()["shapes"])
    arrays = load_numpy(str(path))
    return {name: unpack_mask(arrays[name], tuple(shape)) for name, shape in shapes.items()}


def _saved_key_for(name: str, prefix: str, saved_keys: list[str]) -> str:
    """The checkpoint key of a decoder Linear's weight.

    transformers may save under a legacy layout (LLaVA: `language_model.model.layers...`), so match
    on the tail from the block list onward, skipping vision/audio towers that share that tail.
    """
    tail = prefix.rsplit(".", 1)[-1] + name[len(prefix):] + ".weight"
    hits = [k for k in saved_keys if (k == tail or k.endswith("." + tail)) and not any(h in k for h in _NON_DECODER_HINTS)]
    if len(hits) != 1:
        raise KeyError(f"cannot map {name} to one saved tensor (candidates: {hits})")
    return hits[0]


def count_saved_zeros(folder: Path, names: list[str], prefix: str) -> dict[str, tuple[int, int]]:
    """(zeros, numel) of each pruned matrix, read back from the saved safetensors files."""
    files = sorted(Path(folder).glob("*.safetensors"))
    files = [f for f in files if f.name != MASKS_FILE]
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                where[key] = file
    counts = {}
    for name in names:
        key = _saved_key_for(name, prefix, list(where))
        with safe_open(str(where[key]), "pt") as handle:
            tensor = handle.get_tensor(key)
        counts[name] = (int((tensor == 0).sum()), tensor.numel())
    return counts
