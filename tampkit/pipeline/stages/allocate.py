"""Stage allocate: weights to prune per matrix (uniform, DAS from the stats, OWL from the stats and weights,
ECoFLaP from the block scores)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tampkit.engine.dense_stats import DenseStats
from tampkit.engine.masking import decoder_linears
from tampkit.engine.plan import block_of, plan_counts
from tampkit.core.log import warn
from tampkit.pipeline.stages.context import ALLOCATION_FILE, StageContext, pristine_model, write_csv
from tampkit.store.artifacts import write_json
from tampkit.store.block_store import BlockStore

ALLOCATION_CSV = "allocation.csv"
#: One row per block, one column per matrix type (q_proj, ...): one DVC plot series per type.
ALLOCATION_BY_TYPE_CSV = "allocation_by_type.csv"


def run(ctx: StageContext) -> dict[str, Any]:
    """The plan (weights to prune per matrix) and its CSVs; the allocation and its sparsity."""
    p = ctx.params
    bundle = pristine_model(p)
    structure = p.structure()
    dense = None
    if p.needs_dense_stats():
        dense = DenseStats.from_store(bundle, BlockStore(ctx.layout.stats, ctx.upstream["stats"]["fingerprint"], "stats"))
    allocation = p.pair().allocation
    if structure.is_nm and allocation != "uniform":
        warn(f"allocate: {allocation} does not apply to {structure}: every matrix is pruned {structure}")
    scores = ctx.upstream["sensitivity"]["block_scores"] if p.needs_block_sensitivity() else None
    plan = plan_counts(bundle, allocation, p.prune.sparsity, structure, p.allocation, dense, scores)
    write_json(ctx.out / ALLOCATION_FILE, {"method": p.method_label(), "sparsity": p.prune.sparsity,
                                           "structure": str(structure), "plan": dataclasses.asdict(plan)})
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    rows = []
    for name, linear in decoder_linears(bundle).items():
        row = {"matrix": name, "layer": block_of(name, prefix), "linear": name.rsplit(".", 1)[-1],
               "size": linear.weight.numel(), "allocated_sparsity": plan.counts[name] / linear.weight.numel()}
        if name in plan.diversity:
            row["diversity"] = plan.diversity[name]
        rows.append(row)
    write_csv(ctx.out / ALLOCATION_CSV, rows)
    write_csv(ctx.out / ALLOCATION_BY_TYPE_CSV, allocation_by_type(rows))
    total = sum(r["size"] for r in rows)
    return {"allocation": plan.allocation, "allocated_sparsity": sum(plan.counts.values()) / total}


def allocation_by_type(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """allocation.csv's rows (one per matrix) pivoted to one row per block and a column per matrix
    type, so that a plot draws one line per type instead of zig-zagging through a block's seven."""
    table: dict[int, dict[str, Any]] = {}
    for row in rows:
        table.setdefault(row["layer"], {"layer": row["layer"]})[row["linear"]] = row["allocated_sparsity"]
    return [table[layer] for layer in sorted(table)]
