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


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
