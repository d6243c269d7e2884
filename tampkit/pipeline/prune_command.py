"""`tamp prune`: the pipeline's stages over a temporary (or given) store, gathered into one folder.

It runs the same stage functions as `tamp pipeline`, DVC and Prefect (calibrate, stats when the
allocation reads it, allocate, masks, prune, and evaluate with --eval-ppl), then puts the
checkpoint, masks, report, per-layer CSV and plots (and metrics.json) into OUT, written atomically.
With `--workdir DIR` the store is kept: a rerun with other settings reuses every stage whose
fingerprint still matches (the dense statistics of a sweep over methods and sparsities).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tampkit.core.errors import StageFailed, UsageError
from tampkit.core.ranks import current_ranks
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.params import Params
from tampkit.pipeline.run import needed, run_stages
from tampkit.pipeline.stages.evaluate import METRICS_FILE
from tampkit.pipeline.table import EVALUATION_STAGES, STAGES
from tampkit.store.artifacts import REPORT_FILE, atomic_directory
from tampkit.store.records import RECORD


def default_out(model: str, method: str, sparsity: float, structure: str) -> Path:
    """out/<model>-<method>-<sparsity>: a hub id's slash and a path's folders do not nest it."""
    name = Path(model).name if ("/" in model and Path(model).expanduser().exists()) else model.replace("/", "--")
    suffix = "" if structure == "unstructured" else "-" + structure.replace(":", "of")
    return Path("out") / f"{name.replace(':', '--')}-{method}-{sparsity:g}{suffix}"


def stages_to_run(params: Params, evaluate: bool) -> tuple[str, ...]:
    """Every stage the result needs (stats only when the allocation reads it), evaluate if asked."""
    return tuple(s for s in STAGES if needed(s, params) and (evaluate or s not in EVALUATION_STAGES))


@contextmanager
def _store(workdir: Path | None, out: Path) -> Iterator[tuple[Path, bool]]:
    """The given store, or a temporary one beside OUT (same filesystem: results move, not copy).
    Under torchrun rank 0 makes (and removes) the temporary store and tells the others its path."""
    if workdir is not None:
        yield Path(workdir), False
        return
    ranks = current_ranks()
    if not ranks.is_main:
        yield Path(ranks.broadcast_object(None)), True
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{out.name}.store-", dir=out.parent))
    ranks.broadcast_object(str(root))
    try:
        yield root, True
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _gather(source: Path, target: Path, move: bool) -> None:
    for item in sorted(source.iterdir()):
        if item.name == RECORD:
            continue
        if move:
            os.replace(item, target / item.name)
        elif item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)


def prune_to_folder(params: Params, out: Path, overwrite: bool = False, evaluate: bool = False,
                    workdir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the stages and gather their results into `out`; return the report (and `metrics` when
    evaluated). Nothing is written to `out` unless every stage succeeded. The store's run lock is
    held from the first stage to the last copy, so a concurrent run on the same --workdir cannot
    swap its checkpoint in between."""
    out = Path(out)
    if out.exists() and not overwrite and any(out.iterdir() if out.is_dir() else [out]):
        raise UsageError("--out", f"{out} already exists", "a new path, or add --overwrite")
    replace = overwrite or out.exists()  # an empty folder given as --out is replaced
    with _store(workdir, out) as (root, temporary):
        layout = Layout.under(root)
        with run_lock(layout):
            try:
                run_stages(params, layout, stages_to_run(params, evaluate), progress=progress)
            except StageFailed as err:
                if not temporary:
                    raise
                raise StageFailed(err.summary, "rerun with --workdir DIR to keep the stage outputs for inspection") from None
            if not current_ranks().is_main:  # torchrun: rank 0 gathers and reports
                return {}
            return _gather_all(layout, out, replace, evaluate, temporary)


def _gather_all(layout: Layout, out: Path, overwrite: bool, evaluate: bool, temporary: bool) -> dict[str, Any]:
    """Checkpoint, masks, report, per-layer CSV, plots (and metrics) into `out`, atomically."""
    with atomic_directory(out, overwrite) as tmp:
        _gather(layout.pruned, tmp, move=temporary)
        _gather(layout.reports, tmp, move=temporary)
        report = json.loads((tmp / REPORT_FILE).read_text())
        if evaluate:
            shutil.copy2(layout.metrics / METRICS_FILE, tmp / METRICS_FILE)
            report["metrics"] = json.loads((tmp / METRICS_FILE).read_text())
    return report
