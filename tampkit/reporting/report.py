"""The prune report: what was asked, what was achieved (counted from the saved weights), timings."""

from __future__ import annotations

import re
import resource
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tampkit.models.adapters import NON_DECODER_HINTS
from tampkit.models.compressed import PARTS, decompress_weight, sparsity_config
from tampkit.store.artifacts import MASKS_FILE


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def matrix_rows(planned: dict[str, int], saved: dict[str, tuple[int, int]], masks: dict[str, torch.Tensor],
                plan: Any = None) -> list[dict[str, Any]]:
    """Per matrix: allocated (target) and achieved sparsity; with DAS also D_k and its terms."""
    rows = []
    for name, (zeros, numel) in saved.items():
        row: dict[str, Any] = {
            "name": name,
            "shape": list(masks[name].shape),
            "target_sparsity": planned[name] / numel,
            "achieved_sparsity": zeros / numel,
        }
        if plan is not None and name in plan.diversity:
            row["diversity"] = plan.diversity[name]
            row["similarity_terms"] = plan.terms[name]
        rows.append(row)
    return rows


def block_rows(summaries: list[dict], plan: Any = None) -> list[dict[str, Any]]:
    """Per block: AMIA's mean selected tokens per modality; OWL's outlier ratio and sparsity."""
    rows = []
    for index, summary in enumerate(summaries):
        row: dict[str, Any] = {"block": index}
        if "amia_selected" in summary:
            row["amia_selected_tokens"] = summary["amia_selected"]
        if plan is not None and plan.outlier_ratios:
            row["owl_outlier_ratio"] = plan.outlier_ratios[index]
            row["owl_sparsity"] = plan.block_sparsities[index]
        if plan is not None and plan.block_scores:
            row["ecoflap_score"] = plan.block_scores[index]
            row["ecoflap_sparsity"] = plan.block_sparsities[index]
        rows.append(row)
    return rows


def global_sparsity(saved: dict[str, tuple[int, int]]) -> float:
    zeros = sum(z for z, _ in saved.values())
    total = sum(n for _, n in saved.values())
    return zeros / max(total, 1)


#: ".<block index>.<linear path>" at the end of a full Linear name.
BLOCK_NAME = re.compile(r"\.(\d+)\.(.+)$")


def layer_rows(matrices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per decoder block: allocated and achieved sparsity over its matrices (weighted by size) and,
    with DAS, the mean diversity D_k of its matrices: the per-layer series of plots and MLflow."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in matrices:
        match = BLOCK_NAME.search(row["name"])
        if not match:
            continue
        numel = float(torch.Size(row["shape"]).numel())
        acc = sums[int(match.group(1))]
        acc["numel"] += numel
        acc["allocated"] += row["target_sparsity"] * numel
        acc["achieved"] += row["achieved_sparsity"] * numel
        if "diversity" in row:
            acc["diversity"] += row["diversity"]
            acc["matrices"] += 1
    rows = []
    for layer in sorted(sums):
        acc = sums[layer]
        row = {"layer": layer, "allocated_sparsity": acc["allocated"] / acc["numel"],
               "achieved_sparsity": acc["achieved"] / acc["numel"]}
        if acc["matrices"]:
            row["mean_diversity"] = acc["diversity"] / acc["matrices"]
        rows.append(row)
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """Achieved sparsity per block (rows) and Linear (columns), then the totals."""
    grid: dict[int, dict[str, float]] = defaultdict(dict)
    columns: list[str] = []
    for row in report["matrices"]:
        match = BLOCK_NAME.search(row["name"])
        if not match:
            continue
        block, linear = int(match.group(1)), match.group(2).rsplit(".", 1)[-1]
        grid[block][linear] = row["achieved_sparsity"]
        if linear not in columns:
            columns.append(linear)
    width = max([6] + [len(c) for c in columns])
    lines = ["block " + " ".join(c.rjust(width) for c in columns)]
    for block in sorted(grid):
        lines.append(f"{block:>5} " + " ".join(f"{grid[block].get(c, float('nan')):>{width}.4f}" for c in columns))
    lines.append("")
    lines.append(f"method {report['method']} ({report['structure']}), target {report['target_sparsity']:.4f}, "
                 f"achieved {report['achieved_sparsity']:.6f} over {len(report['matrices'])} matrices")
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report["seconds"].items())
    lines.append(f"time: {phases}; peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    if "heldout_perplexity" in report:
        lines.append(f"held-out perplexity: {report['heldout_perplexity']:.3f}")
    return "\n".join(lines)


def cuda_peak_bytes() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def _saved_key_for(name: str, prefix: str, saved_keys: list[str]) -> str:
    """The checkpoint key of a decoder Linear's weight.

    transformers may save under a legacy layout (LLaVA: `language_model.model.layers...`), so match
    on the tail from the block list onward, skipping vision/audio towers that share that tail.
    """
    tail = prefix.rsplit(".", 1)[-1] + name[len(prefix):] + ".weight"
    hits = [k for k in saved_keys if (k == tail or k.endswith("." + tail)) and not any(h in k for h in NON_DECODER_HINTS)]
    if len(hits) != 1:
        raise KeyError(f"cannot map {name} to one saved tensor (candidates: {hits})")
    return hits[0]


def _saved_tensors(folder: Path) -> dict[str, Path]:
    """Each saved weight's key -> its file; a compressed Linear (tampkit/models/compressed.py) under
    the `<module>.weight` key it stands for."""
    files = [f for f in sorted(Path(folder).glob("*.safetensors")) if f.name != MASKS_FILE]
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                where[key] = file
    config = sparsity_config(folder)
    if config is not None:
        for module in config["targets"]:
            where[f"{module}.weight"] = where[f"{module}.bitmask"]
    return where


def saved_weight_keys(folder: Path, names: list[str], prefix: str) -> dict[str, str]:
    """The checkpoint key of each pruned matrix's weight in a saved folder."""
    where = list(_saved_tensors(folder))
    return {name: _saved_key_for(name, prefix, where) for name in names}


def count_saved_zeros(folder: Path, names: list[str], prefix: str) -> dict[str, tuple[int, int]]:
    """(zeros, numel) of each pruned matrix, read back from the saved safetensors files (a
    compressed Linear decompressed first)."""
    where = _saved_tensors(folder)
    config = sparsity_config(folder)
    parts = PARTS[config["format"]] if config is not None else ()
    counts = {}
    for name in names:
        key = _saved_key_for(name, prefix, list(where))
        module = key.removesuffix(".weight")
        with safe_open(str(where[key]), "pt") as handle:
            if config is not None and module in config["targets"]:
                tensor = decompress_weight({part: handle.get_tensor(f"{module}.{part}") for part in parts})
            else:
                tensor = handle.get_tensor(key)
        counts[name] = (int((tensor == 0).sum()), tensor.numel())
    return counts
