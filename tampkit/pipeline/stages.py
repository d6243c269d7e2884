"""The six pipeline stages as plain functions over the artifact store: what `tamp stage NAME`
(and so dvc.yaml), the Prefect tasks and the sweep all call.

calibrate -> stats -> allocate -> masks -> prune -> evaluate. Each stage reads the records of the
stages before it (stage_io.UPSTREAM), is skipped when its folder already holds a record with the
same fingerprint, and otherwise writes its folder atomically (temp name, then rename), except
stats and masks, which write one file per finished block and resume from them.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tampkit import __version__
from tampkit.store.artifacts import REPORT_FILE, atomic_directory, temp_beside, write_json
from tampkit.store.block_store import BlockStore
from tampkit.calibration import load_calibration
from tampkit.core.devices import resolve_device
from tampkit.engine.dense_stats import DenseStats, dense_pass
from tampkit.engine.masking import apply_stored_blocks, decoder_linears, prune_blocks
from tampkit.core.errors import StageFailed, UsageError
from tampkit.evaluation import dense_agreement, image_qa, perplexity
from tampkit.evaluation.agreement import agreement_inputs
from tampkit.evaluation.suites import get_suite
from tampkit.core.log import collected_warnings, warn
from tampkit.methods import METHODS, make_method
from tampkit.methods.amia_wanda import AmiaWanda
from tampkit.models import load_model
from tampkit.core.types import MODALITIES
from tampkit.models.adapters import ModelBundle
from tampkit.models.loading import model_identity
from tampkit.pipeline.params import Params
from tampkit.engine.plan import Plan, block_of, plan_counts
from tampkit.reporting.plots import write_plots
from tampkit.pipeline.prune_command import amia_example, save_pruned
from tampkit.reporting.report import layer_rows
from tampkit.store.locks import run_lock, stage_lock
from tampkit.store.layout import (
    RECORD,
    STAGES,
    UPSTREAM,
    Layout,
    code_version,
    fingerprint,
    load_encoded,
    read_record,
    save_encoded,
    write_record,
)

INPUTS_FILE = "inputs.safetensors"
MANIFEST_FILE = "manifest.json"
ALLOCATION_FILE = "allocation.json"
ALLOCATION_CSV = "allocation.csv"
#: One row per block, one column per matrix type (q_proj, ...): one DVC plot series per type.
ALLOCATION_BY_TYPE_CSV = "allocation_by_type.csv"
LAYERS_CSV = "layers.csv"
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.json"
BLOCKS_FILE = "blocks.json"
#: Stages that write one file per block into their folder (resumable) instead of a whole folder.
RESUMABLE = ("stats", "masks")


@dataclass
class StageContext:
    """What a stage function gets: validated params, the store, its fingerprint and upstream records."""

    params: Params
    layout: Layout
    fingerprint: str
    upstream: dict[str, dict[str, Any]]
    out: Path
    progress: bool = True

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params.model.device)


_PRISTINE: dict[tuple[str, str], ModelBundle] = {}


def pristine_model(params: Params) -> ModelBundle:
    """The unpruned model, loaded once per process (a flow's stages share it); never modify it."""
    key = (params.model.name, params.model.dtype)
    if key not in _PRISTINE:
        _PRISTINE.clear()
        _PRISTINE[key] = load_model(*key)
    return _PRISTINE[key]


def working_copy(params: Params) -> ModelBundle:
    """A private copy of the model for stages that prune it."""
    bundle = pristine_model(params)
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    tmp = temp_beside(path)
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


# --- the stages -------------------------------------------------------------------------------


def calibrate(ctx: StageContext) -> dict[str, Any]:
    """Sample the calibration set, tokenise it for the model, label every token's modality."""
    cal = ctx.params.calibration
    bundle = pristine_model(ctx.params)
    samples = load_calibration(cal.source, cal.nsamples, cal.seed)
    encoded = [bundle.adapter.encode(bundle, s) for s in tqdm(samples, desc="encode", disable=not ctx.progress)]
    labels = [bundle.adapter.modality_labels(bundle.model, e["input_ids"]) for e in encoded]
    save_encoded(ctx.out / INPUTS_FILE, encoded, labels)
    rows = [{"id": s.id, "image": s.image is not None, "media": s.media(), "tokens": int(lab.numel()),
             "modalities": {MODALITIES[int(m)]: int((lab == m).sum()) for m in torch.unique(lab)}}
            for s, lab in zip(samples, labels)]
    write_json(ctx.out / MANIFEST_FILE, {"source": cal.source, "nsamples": cal.nsamples, "seed": cal.seed,
                                         "samples": rows})
    return {"samples": len(rows), "image_samples": sum(r["image"] for r in rows),
            "tokens": sum(r["tokens"] for r in rows)}


def _encoded(ctx: StageContext) -> list[dict[str, torch.Tensor]]:
    return load_encoded(ctx.layout.calibration / INPUTS_FILE)[0]


def stats(ctx: StageContext) -> dict[str, Any]:
    """The dense statistics pass, one file per block (resumable); independent of method and sparsity."""
    bundle = pristine_model(ctx.params)
    store = BlockStore(ctx.out, ctx.fingerprint, "stats")
    store.remove_beyond(len(bundle.adapter.decoder_layers(bundle.model)[1]))
    dense_pass(bundle, _encoded(ctx), ctx.device, ctx.params.stats.intra == "positive", True, ctx.progress, store)
    return {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}


def allocate(ctx: StageContext) -> dict[str, Any]:
    """Weights to prune per matrix: uniform, DAS from the stats, or OWL from the stats and weights."""
    p = ctx.params
    bundle = pristine_model(p)
    allocation = METHODS[p.prune.method].allocation
    structure = p.structure()
    dense = None
    if allocation != "uniform" and not structure.is_nm:
        dense = DenseStats.from_store(bundle, BlockStore(ctx.layout.stats, ctx.upstream["stats"]["fingerprint"], "stats"))
    plan = plan_counts(bundle, allocation, p.prune.sparsity, structure, p.method_params(), dense)
    write_json(ctx.out / ALLOCATION_FILE, {"method": p.prune.method, "sparsity": p.prune.sparsity,
                                           "structure": str(structure), "plan": dataclasses.asdict(plan)})
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    rows = []
    for name, linear in decoder_linears(bundle).items():
        row = {"matrix": name, "layer": block_of(name, prefix), "linear": name.rsplit(".", 1)[-1],
               "size": linear.weight.numel(), "allocated_sparsity": plan.counts[name] / linear.weight.numel()}
        if name in plan.diversity:
            row["diversity"] = plan.diversity[name]
        rows.append(row)
    _write_csv(ctx.out / ALLOCATION_CSV, rows)
    _write_csv(ctx.out / ALLOCATION_BY_TYPE_CSV, allocation_by_type(rows))
    total = sum(r["size"] for r in rows)
    return {"allocation": plan.allocation, "allocated_sparsity": sum(plan.counts.values()) / total}


def allocation_by_type(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """allocation.csv's rows (one per matrix) pivoted to one row per block and a column per matrix
    type, so that a plot draws one line per type instead of zig-zagging through a block's seven."""
    table: dict[int, dict[str, Any]] = {}
    for row in rows:
        table.setdefault(row["layer"], {"layer": row["layer"]})[row["linear"]] = row["allocated_sparsity"]
    return [table[layer] for layer in sorted(table)]


def _read_plan(layout: Layout) -> Plan:
    return Plan(**json.loads((layout.allocation / ALLOCATION_FILE).read_text())["plan"])


def _example_sample(layout: Layout) -> int | None:
    rows = json.loads((layout.calibration / MANIFEST_FILE).read_text())["samples"]
    return next((i for i, row in enumerate(rows) if row["image"]), None)


def masks(ctx: StageContext) -> dict[str, Any]:
    """Score and mask every block in order, one file per block (resumable, bit-identical on resume)."""
    p = ctx.params
    bundle = working_copy(p)
    method = make_method(p.prune.method, p.method_params())
    if isinstance(method, AmiaWanda):
        method.example_sample = _example_sample(ctx.layout)
    store = BlockStore(ctx.out, ctx.fingerprint, "masks")
    store.remove_beyond(len(bundle.adapter.decoder_layers(bundle.model)[1]))
    encoded = _encoded(ctx) if method.needs_calibration else []
    result = prune_blocks(bundle, encoded, method, _read_plan(ctx.layout).counts, p.structure(), ctx.device,
                          p.prune.propagation, ctx.progress, store)
    write_json(ctx.out / BLOCKS_FILE, result.blocks)
    return {"blocks_loaded": len(store.loaded), "blocks_computed": len(store.computed)}


def prune(ctx: StageContext) -> dict[str, Any]:
    """Apply the stored masks to a fresh model; save the checkpoint, the report, per-layer CSV, plots."""
    p = ctx.params
    bundle = working_copy(p)
    result = apply_stored_blocks(bundle, BlockStore(ctx.layout.masks, ctx.upstream["masks"]["fingerprint"], "masks"))
    plan = _read_plan(ctx.layout)
    calibration = ctx.upstream["calibrate"]
    header = {
        "tampkit_version": __version__, "model": p.model.name, "family": bundle.adapter.family,
        "method": p.prune.method, "structure": str(p.structure()), "target_sparsity": p.prune.sparsity,
        "calibration": p.calibration.source, "nsamples": calibration["samples"],
        "image_samples": calibration["image_samples"], "calibration_tokens": calibration["tokens"],
        "seed": p.calibration.seed, "propagation": p.prune.propagation, "device": str(ctx.device),
        "method_params": p.method_params().to_dict(), "params_hash": p.digest(),
    }
    report = save_pruned(bundle, ctx.out, result, plan, header)
    with atomic_directory(ctx.layout.reports, overwrite=True) as reports:
        example = None
        if any(b.get("amia_example") for b in result.blocks):
            samples = load_calibration(p.calibration.source, p.calibration.nsamples, p.calibration.seed)
            example = amia_example(bundle, samples, [{"input_ids": e["input_ids"]} for e in _encoded(ctx)], result.blocks)
        if example is not None:
            report["amia_example"] = {k: example[k] for k in ("sample", "block", "picks")}
        report["plots"] = write_plots(report, reports, example)
        write_json(reports / REPORT_FILE, report)
        _write_csv(reports / LAYERS_CSV, layer_rows(report["matrices"]))
    return {"achieved_sparsity": report["achieved_sparsity"]}


def evaluate(ctx: StageContext) -> dict[str, Any]:
    """The selected offline suite on the pruned checkpoint (and lmms-eval tasks when asked).

    A suite that fails is one warning line and an entry in `errors`; the others still run and are
    reported (`metrics.json`: numbers only, for DVC; `samples.json`: per-item logs), and then the
    stage fails (run_stage records it as failed, so it reruns next time and is never reused).
    """
    e = ctx.params.evaluate
    report = json.loads((ctx.layout.reports / REPORT_FILE).read_text())
    metrics: dict[str, Any] = {"target_sparsity": report["target_sparsity"],
                               "achieved_sparsity": report["achieved_sparsity"]}
    samples: dict[str, Any] = {}
    errors: dict[str, str] = {}
    pruned = load_model(str(ctx.layout.pruned))
    suites: dict[str, Callable[[], None]] = {}
    if e.perplexity:
        suites["perplexity"] = lambda: metrics.update(
            heldout_perplexity=perplexity(pruned, window=e.ppl_window, device=ctx.device))
    if e.image_qa:
        def run_qa() -> None:
            values, samples["image_qa"] = image_qa(pruned, max_new_tokens=e.qa_max_new_tokens, device=ctx.device,
                                                   limit=e.limit)
            metrics.update(values)
        suites["image_qa"] = run_qa
    if e.scene_qa:  # a plug-in suite (the organism's): its scores and the references stored beside them
        def run_scene_qa() -> None:
            values, samples["scene_qa"] = get_suite("scene_qa").score(pruned, e.limit, ctx.device, ctx.progress)
            metrics.update(values)
        suites["scene_qa"] = run_scene_qa
    if e.dense_agreement:
        def run_agreement() -> None:
            own = get_suite("scene_qa").agreement_inputs if e.scene_qa else None
            if own is not None:  # the organism's own questions, not prose it has no words for
                inputs = own(pruned, e.limit)
            else:
                inputs = agreement_inputs(pruned, e.agreement_text_windows, e.ppl_window, e.limit)
            metrics.update(dense_agreement(pristine_model(ctx.params), pruned, inputs, ctx.device))
        suites["dense_agreement"] = run_agreement
    if e.lmms_tasks:
        def run_lmms() -> None:
            from tampkit.lmms.run import run_lmms_tasks

            values, samples["lmms"], failed = run_lmms_tasks(pruned, list(e.lmms_tasks), e.limit, str(ctx.device))
            metrics.update(values)
            for task, line in failed.items():
                errors[f"lmms:{task}"] = line
                warn(f"evaluate: lmms-eval task {task} failed: {line}")
        suites["lmms"] = run_lmms
    for name, run in suites.items():
        try:
            run()
        except Exception as err:  # noqa: BLE001 - one suite's failure must not lose the others
            errors[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            warn(f"evaluate: {name} failed: {errors[name]}")
    write_json(ctx.out / METRICS_FILE, metrics)
    write_json(ctx.out / SAMPLES_FILE, samples)
    return {"metrics": metrics, "errors": errors}


STAGE_FUNCTIONS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "calibrate": calibrate, "stats": stats, "allocate": allocate, "masks": masks, "prune": prune,
    "evaluate": evaluate,
}


# --- running a stage --------------------------------------------------------------------------


def stage_fingerprint(stage: str, params: Params, upstream: dict[str, dict[str, Any]]) -> str:
    return fingerprint(stage, params.stage_view(stage), {u: r["fingerprint"] for u, r in upstream.items()},
                       model_identity(params.model.name), code_version(stage))


def upstream_records(stage: str, layout: Layout) -> dict[str, dict[str, Any]]:
    records = {}
    for name in UPSTREAM[stage]:
        record = read_record(layout.folder(name))
        if record is None:
            raise UsageError(f"stage {stage}", f"needs the {name} stage's output in {layout.folder(name)}",
                             f"run `tamp stage {name}` first")
        records[name] = record
    return records


def _clear_blocks(folder: Path) -> None:
    for path in folder.glob("block_*.safetensors"):
        path.unlink()


def run_stage(stage: str, params: Params, layout: Layout, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its record says it is up to date; return its record.

    The record's `reused` is True when nothing ran. A resumable stage (stats, masks) reports
    which blocks it read back and which it computed. `force` reruns the stage from scratch (block
    files included). A stage whose part failed writes its outputs with `status: failed` and raises
    StageFailed: a failed record is never reused. The stage's lock (run_lock) makes a concurrent
    run on the same store wait instead of reading half of this one's outputs.
    """
    if stage not in STAGE_FUNCTIONS:
        raise UsageError("stage", f"unknown stage '{stage}'", STAGES)
    with stage_lock(stage, layout):
        upstream = upstream_records(stage, layout)
        fp = stage_fingerprint(stage, params, upstream)
        folder = layout.folder(stage)
        existing = read_record(folder)
        extra_outputs_there = stage != "prune" or (layout.reports / REPORT_FILE).exists()
        if (not force and existing is not None and existing.get("fingerprint") == fp
                and existing.get("status", "ok") == "ok" and extra_outputs_there):
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

        with collected_warnings() as found:
            if stage in RESUMABLE:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / RECORD).unlink(missing_ok=True)
                if force:
                    _clear_blocks(folder)
                record.update(STAGE_FUNCTIONS[stage](StageContext(params, layout, fp, upstream, folder, progress)))
                finish(folder, found)
            else:
                with atomic_directory(folder, overwrite=True) as tmp:
                    record.update(STAGE_FUNCTIONS[stage](StageContext(params, layout, fp, upstream, tmp, progress)))
                    finish(tmp, found)
    if record["status"] == "failed":
        failed = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
        raise StageFailed(f"{stage}: failed ({failed}); outputs kept in {folder} for inspection, rerun to retry")
    return {**record, "reused": False}


def run_pipeline(params: Params, layout: Layout, progress: bool = True,
                 on_stage: Callable[[str, dict[str, Any]], None] | None = None,
                 force: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every stage in order under the run's lock (what `tamp pipeline` runs without DVC or Prefect);
    `force` names stages to rerun even when their record is up to date."""
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise UsageError("--force", f"unknown stage '{unknown[0]}'", STAGES)
    records = {}
    with run_lock(layout):
        for stage in STAGES:
            records[stage] = run_stage(stage, params, layout, progress, force=stage in force)
            if on_stage is not None:
                on_stage(stage, records[stage])
    return records
