"""Running stages: the one way `tamp prune`, `tamp stage`, `tamp pipeline`, DVC and Prefect run them.

A stage is skipped when its folder holds an ok record with the same fingerprint and its declared
outputs are there; otherwise it writes its folder atomically (temp name, then rename), except the
resumable stages (stats, masks), which write one file per finished block and resume from them.

Under torchrun (several ranks, see tampkit.core.ranks) rank 0 does everything above: it takes the
locks, decides whether a stage runs, writes every file and record. It tells the other ranks what it
decided; the block-walking stages (stats, sensitivity, masks: the resumable ones) then run on every
rank, each measuring its shard of the calibration samples, and the other stages on rank 0 alone
while the rest wait for its record.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tampkit import __version__
from tampkit.core.errors import StageFailed, UsageError
from tampkit.core.log import collected_warnings
from tampkit.core.ranks import Ranks, current_ranks
from tampkit.models.loading import model_identity
from tampkit.pipeline.imports import code_files, relative
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.locks import run_lock, stage_lock
from tampkit.pipeline.params import Params
from tampkit.pipeline.table import RESUMABLE, STAGE, STAGES
from tampkit.store.artifacts import atomic_directory
from tampkit.store.records import RECORD, fingerprint, read_record, write_record

#: The status of the record a stage leaves when the result does not need it (see `Stage.when`).
SKIPPED = "skipped"

#: A stage's `run(ctx) -> record fields` (ctx: pipeline.stages.context.StageContext).
StageFunction = Callable[[Any], dict[str, Any]]


@functools.lru_cache(maxsize=None)
def code_version(stage: str) -> str:
    """SHA-256 of every package file the stage's module reaches through imports (and their data)."""
    digest = hashlib.sha256()
    for file in code_files(STAGE[stage].module):
        digest.update(relative(file).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def stage_function(stage: str) -> StageFunction:
    """The stage's `run`, imported on first use (a stage's module loads only what it runs)."""
    return importlib.import_module(STAGE[stage].module).run


def stage_fingerprint(stage: str, params: Params, upstream: dict[str, dict[str, Any]]) -> str:
    """Hash of what the stage's result depends on: the params it reads, its upstream records, the
    model's identity and its code."""
    return fingerprint(stage, params.stage_view(stage), {u: r["fingerprint"] for u, r in upstream.items()},
                       model_identity(params.model.name), code_version(stage))


def needed(stage: str, params: Params) -> bool:
    """Whether the result of `params` needs the stage (see `Stage.when`)."""
    return params.needs(stage)


def upstream_records(stage: str, layout: Layout, params: Params) -> dict[str, dict[str, Any]]:
    """The records of the upstream stages this result needs; a missing one is a usage error."""
    records = {}
    for name in STAGE[stage].upstream:
        if not needed(name, params):
            continue
        record = read_record(layout.folder(name))
        if record is None or record.get("status") == SKIPPED:
            raise UsageError(f"stage {stage}", f"needs the {name} stage's output in {layout.folder(name)}",
                             f"run `tamp stage {name}` first" + (" with these params" if record else ""))
        records[name] = record
    return records


def outputs_there(stage: str, layout: Layout) -> bool:
    """Every output the stage declares exists (a record alone does not make a stage done)."""
    root = layout.folder(stage).parent
    return all((root / out.path).exists() for out in STAGE[stage].outs)


def up_to_date(stage: str, params: Params, layout: Layout, fingerprint_: str | None = None) -> dict[str, Any] | None:
    """The stage's record when it stands for this result (an ok record with the expected fingerprint
    and every declared output on disk), else None: the one rule every driver reuses a stage by."""
    if fingerprint_ is None:
        try:
            fingerprint_ = stage_fingerprint(stage, params, upstream_records(stage, layout, params))
        except UsageError:  # an upstream record is missing: nothing can be up to date
            return None
    record = read_record(layout.folder(stage))
    # A stage the result does not need stands for it with a `skipped` record too (or a real one).
    accepted = ("ok",) if needed(stage, params) else ("ok", SKIPPED)
    if (record is None or record.get("fingerprint") != fingerprint_ or record.get("status", "ok") not in accepted
            or not outputs_there(stage, layout)):
        return None
    return record


def _clear_blocks(folder: Path) -> None:
    for path in folder.glob("block_*.safetensors"):
        path.unlink()


def run_stage(stage: str, params: Params, layout: Layout, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its record says it is up to date; return its record.

    The record's `reused` is True when nothing ran. A resumable stage (stats, masks) reports
    which blocks it read back and which it computed. `force` reruns the stage from scratch (block
    files included). A stage the result does not need (`Stage.when`) only writes a `skipped` record.
    A stage whose part failed writes its outputs with `status: failed` and raises
    StageFailed: a failed record is never reused. The stage's lock makes a concurrent run on the
    same store wait instead of reading half of this one's outputs.
    """
    from tampkit.pipeline.stages.context import StageContext

    if stage not in STAGE:
        raise UsageError("stage", f"unknown stage '{stage}'", STAGES)
    ranks = current_ranks()
    if not ranks.is_main:
        return _follow_stage(stage, params, layout, ranks)
    told = [False]  # whether the other ranks have heard rank 0's first word about this stage

    def tell(kind: str, payload: Any) -> None:
        ranks.broadcast_object((kind, payload))
        told[0] = True

    try:
        return _lead_stage(stage, params, layout, progress, force, tell)
    except Exception as err:
        if ranks.parallel and not told[0]:  # the others wait for a word: tell them it failed
            tell("error", str(err))
        raise


def _follow_stage(stage: str, params: Params, layout: Layout, ranks: Ranks) -> dict[str, Any]:
    """A rank other than 0: run the stage's block walk with rank 0 when it says so, else wait for
    its record. Writes nothing (the block store and the stage functions write on rank 0 only)."""
    from tampkit.pipeline.stages.context import StageContext

    kind, payload = ranks.broadcast_object(None)
    if kind == "error":
        raise StageFailed(f"{stage}: failed on rank 0 ({payload})", "see rank 0's message above")
    if kind == "run":
        fingerprint_, upstream = payload
        with collected_warnings():
            stage_function(stage)(StageContext(params, layout, fingerprint_, upstream, layout.folder(stage), False))
        kind, payload = ranks.broadcast_object(None)
    if payload.get("status") == "failed":
        raise StageFailed(f"{stage}: failed on rank 0", "see rank 0's message above")
    return payload


def _lead_stage(stage: str, params: Params, layout: Layout, progress: bool, force: bool,
                tell: Callable[[str, Any], None]) -> dict[str, Any]:
    """`run_stage` on rank 0 (the only rank of a plain run); `tell` reaches the other ranks, if any."""
    from tampkit.pipeline.stages.context import StageContext

    with stage_lock(stage, layout):
        upstream = upstream_records(stage, layout, params)
        fp = stage_fingerprint(stage, params, upstream)
        folder = layout.folder(stage)
        existing = None if force else up_to_date(stage, params, layout, fp)
        if existing is not None:
            tell("done", {**existing, "reused": True})
            return {**existing, "reused": True}
        start = time.perf_counter()
        record: dict[str, Any] = {"stage": stage, "fingerprint": fp,
                                  "upstream": {u: r["fingerprint"] for u, r in upstream.items()},
                                  "params": params.stage_view(stage), "code": code_version(stage),
                                  "model": model_identity(params.model.name), "tampkit_version": __version__}

        def finish(out: Path, found: list[str]) -> None:
            record["seconds"] = time.perf_counter() - start
            record["warnings"] = list(found)
            record["status"] = "failed" if record.get("errors") else "ok"
            write_record(out, record)

        run = stage_function(stage)
        with collected_warnings() as found:
            if not needed(stage, params):  # nothing to compute; block files of a real run stay
                record.update(status=SKIPPED, seconds=0.0, warnings=[])
                folder.mkdir(parents=True, exist_ok=True)
                write_record(folder, record)
                tell("done", {**record, "reused": False})
                return {**record, "reused": False}
            if stage in RESUMABLE:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / RECORD).unlink(missing_ok=True)
                if force:
                    _clear_blocks(folder)
                tell("run", (fp, upstream))  # the block walk runs on every rank, each on its shard
                record.update(run(StageContext(params, layout, fp, upstream, folder, progress)))
                finish(folder, found)
            else:
                with atomic_directory(folder, overwrite=True) as tmp:
                    record.update(run(StageContext(params, layout, fp, upstream, tmp, progress)))
                    finish(tmp, found)
    tell("done", {**record, "reused": False})
    if record["status"] == "failed":
        failed = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
        raise StageFailed(f"{stage}: failed ({failed})", f"outputs kept in {folder} for inspection, rerun to retry")
    return {**record, "reused": False}


def run_stages(params: Params, layout: Layout, stages: tuple[str, ...] = STAGES, progress: bool = True,
               on_stage: Callable[[str, dict[str, Any]], None] | None = None,
               force: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """`stages` in pipeline order under the run's lock (`tamp pipeline`, `tamp prune`); `force`
    names stages to rerun even when their record is up to date."""
    for name in (*stages, *force):
        if name not in STAGE:
            raise UsageError("--force" if name in force else "stage", f"unknown stage '{name}'", STAGES)
    records = {}
    with run_lock(layout):
        for stage in (s for s in STAGES if s in stages):
            records[stage] = run_stage(stage, params, layout, progress, force=stage in force)
            if on_stage is not None:
                on_stage(stage, records[stage])
    return records
