"""The markdown report a flow run leaves in the Prefect UI: stages, per-layer sparsity, metrics."""

from __future__ import annotations

import csv
import json
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tampkit.pipeline.params import Params
from tampkit.pipeline.stages.evaluate import METRICS_FILE
from tampkit.pipeline.stages.prune import LAYERS_CSV
from tampkit.pipeline.layout import Layout


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_markdown(params: Params, layout: Layout, stages: dict[str, dict[str, Any]]) -> str:
    """`stages`: per stage its task state name and record (seconds, blocks read back/computed)."""
    p = params.prune
    parts = [f"# {params.model.name}: {params.method_label()} at {p.sparsity:g} ({p.structure})", "",
             markdown_table(["stage", "state", "seconds", "blocks read back", "blocks computed"],
                    [[s, v["state"], round(float(v["record"].get("seconds", 0.0)), 1),
                      v["record"].get("blocks_loaded", ""), v["record"].get("blocks_computed", "")]
                     for s, v in stages.items()])]
    problems = [[s, "error", f"{k}: {v}"] for s, v in stages.items() for k, v in v["record"].get("errors", {}).items()]
    problems += [[s, "warning", w] for s, v in stages.items() for w in v["record"].get("warnings", [])]
    if problems:
        parts += ["", "## Warnings and errors", "", markdown_table(["stage", "kind", "message"], problems)]
    metrics_file = layout.metrics / METRICS_FILE
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        parts += ["", "## Metrics", "", markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()])]
    layers_file = layout.reports / LAYERS_CSV
    if layers_file.exists():
        with layers_file.open() as handle:
            rows = list(csv.DictReader(handle))
        columns = [c for c in ("layer", "allocated_sparsity", "achieved_sparsity", "mean_diversity") if rows and c in rows[0]]
        parts += ["", "## Sparsity per layer", "",
                  markdown_table(columns, [[int(r["layer"])] + [float(r[c]) for c in columns[1:] if r[c]] for r in rows])]
    return "\n".join(parts) + "\n"


@task(name="report", cache_policy=NO_CACHE)
def publish_markdown(markdown: str, key: str) -> str:
    """Key: lowercase letters, digits and dashes (Prefect's rule)."""
    return str(create_markdown_artifact(markdown=markdown, key=key, description="TAMP pipeline run"))
