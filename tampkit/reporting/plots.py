"""Pictures written beside the report: what a person would rather look at than a JSON file.

- sparsity_by_layer.png: achieved (solid) and allocated (dashed) sparsity of each matrix type by block;
- diversity_by_layer.png: DAS diversity terms (1 - similarity) by block, one panel per term;
- amia_tokens_by_modality.png: AMIA's selected tokens per modality (image, video, audio, text) by block;
- amia_selected_tokens.png: for one calibration image, the image tokens AMIA selected in one
  block, drawn over the image (how many of the block's Linears picked each token).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from tampkit.reporting.report import BLOCK_NAME


def _by_type(report: dict[str, Any], key: str) -> dict[str, dict[int, Any]]:
    series: dict[str, dict[int, Any]] = defaultdict(dict)
    for row in report["matrices"]:
        match = BLOCK_NAME.search(row["name"])
        if match and key in row:
            series[match.group(2).rsplit(".", 1)[-1]][int(match.group(1))] = row[key]
    return series


def plot_sparsity(report: dict[str, Any], path: Path) -> None:
    achieved, allocated = _by_type(report, "achieved_sparsity"), _by_type(report, "target_sparsity")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, (kind, points) in enumerate(achieved.items()):
        color = f"C{index}"
        blocks = sorted(points)
        ax.plot(blocks, [points[b] for b in blocks], "o-", color=color, label=kind, markersize=3)
        ax.plot(blocks, [allocated[kind][b] for b in blocks], "--", color=color, alpha=0.5)
    ax.axhline(report["target_sparsity"], color="black", lw=0.8, ls=":", label="target")
    ax.set(xlabel="decoder block", ylabel="sparsity",
           title=f"{report['method']} at {report['target_sparsity']:g}: achieved (solid), allocated (dashed); "
                 f"global {report['achieved_sparsity']:.4f}")
    ax.title.set_fontsize(9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_diversity(report: dict[str, Any], path: Path) -> None:
    terms = _by_type(report, "similarity_terms")
    names = sorted({t for points in terms.values() for v in points.values() for t in v})
    cols = min(3, len(names))  # image+text: one row of 3; video+audio+text: two rows of 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, term in zip(axes.flat, names):
        for index, (kind, points) in enumerate(terms.items()):
            blocks = [b for b in sorted(points) if term in points[b]]
            ax.plot(blocks, [1 - points[b][term] for b in blocks], "o-", color=f"C{index}", label=kind, markersize=3)
        ax.set(title=f"1 - s[{term}]", xlabel="decoder block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for row in axes:
        row[0].set_ylabel("diversity term")
    axes.flat[len(names) - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_amia_by_modality(report: dict[str, Any], path: Path) -> None:
    """AMIA's mean selected tokens per Linear and sample, by block, one line per modality."""
    blocks = [row for row in report["blocks"] if "amia_selected_tokens" in row]
    modalities = sorted({m for row in blocks for m in row["amia_selected_tokens"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, modality in enumerate(modalities):
        points = [(row["block"], row["amia_selected_tokens"][modality]) for row in blocks
                  if modality in row["amia_selected_tokens"]]
        ax.plot([b for b, _ in points], [v for _, v in points], "o-", color=f"C{index}", label=modality, markersize=3)
    ax.set(xlabel="decoder block", ylabel="selected tokens (mean per Linear and sample)",
           title=f"AMIA's selected tokens by modality ({report['method']} at {report['target_sparsity']:g})")
    ax.title.set_fontsize(9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Panel:
    """A grid of image tokens: `rows x cols` tokens starting at `offset` among the image tokens;
    `newline` when each row ends with one extra (LLaVA-NeXT's row-newline) token."""

    title: str
    rows: int
    cols: int
    offset: int
    newline: bool = False

    @property
    def tokens(self) -> int:
        return self.rows * (self.cols + int(self.newline))


def image_panels(family: str, n_image_tokens: int, image_wh: tuple[int, int], base_side: int | None) -> list[Panel]:
    """How a family lays its image tokens over the picture (raster order within each grid)."""
    w, h = image_wh
    if family == "llava-next" and base_side and n_image_tokens > base_side * base_side:
        rest = n_image_tokens - base_side * base_side
        # Unpadded high-resolution grid: R rows of C tokens + newline, C / R close to the aspect.
        rows = min((r for r in range(1, rest + 1) if rest % r == 0 and rest // r >= 2),
                   key=lambda r: abs(math.log((rest // r - 1) / r) - math.log(w / h)))
        return [Panel("base image", base_side, base_side, 0),
                Panel("high-resolution tiles", rows, rest // rows - 1, base_side * base_side, newline=True)]
    side = math.isqrt(n_image_tokens)
    if side * side == n_image_tokens:
        return [Panel("image tokens", side, side, 0)]
    # Unknown layout (e.g. Qwen2-VL at native resolution): the aspect-closest factorisation.
    rows = min((r for r in range(1, n_image_tokens + 1) if n_image_tokens % r == 0),
               key=lambda r: abs(math.log((n_image_tokens // r) / r) - math.log(w / h)))
    return [Panel("image tokens", rows, n_image_tokens // rows, 0)]


def plot_selected_tokens(image: Any, labels: list[int], picks: dict[str, list[int]], block: int, family: str,
                         base_side: int | None, path: Path) -> None:
    """Heat over the image: for each image token, how many of the block's Linears selected it."""
    image_positions = [i for i, code in enumerate(labels) if code == 1]
    rank = {pos: k for k, pos in enumerate(image_positions)}
    hits = [0] * len(image_positions)
    text_picks = 0
    for chosen in picks.values():
        for pos in chosen:
            if pos in rank:
                hits[rank[pos]] += 1
            else:
                text_picks += 1
    panels = image_panels(family, len(image_positions), image.size, base_side)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    w, h = image.size
    for ax, panel in zip(axes[0], panels):
        ax.imshow(image)
        for k in range(panel.tokens):
            count = hits[panel.offset + k] if panel.offset + k < len(hits) else 0
            r, c = divmod(k, panel.cols + int(panel.newline))
            if count == 0 or c >= panel.cols:
                continue
            x0, y0 = c * w / panel.cols, r * h / panel.rows
            ax.add_patch(plt.Rectangle((x0, y0), w / panel.cols, h / panel.rows, fill=True, alpha=0.35 + 0.08 * count,
                                       color="red", lw=0))
        ax.set_title(f"{panel.title} ({panel.rows}x{panel.cols})", fontsize=9)
        ax.axis("off")
    n_linears = max(len(picks), 1)
    fig.suptitle(f"AMIA picks in block {block}: red = image tokens chosen by any of {n_linears} Linears "
                 f"(darker = more); text picks: {text_picks / n_linears:.1f} per Linear", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(report: dict[str, Any], folder: Path, example: dict[str, Any] | None = None) -> list[str]:
    """Every plot that applies to this report; returns the file names written."""
    written = []
    plot_sparsity(report, folder / "sparsity_by_layer.png")
    written.append("sparsity_by_layer.png")
    if any("similarity_terms" in row for row in report["matrices"]):
        plot_diversity(report, folder / "diversity_by_layer.png")
        written.append("diversity_by_layer.png")
    if any("amia_selected_tokens" in row for row in report.get("blocks", [])):
        plot_amia_by_modality(report, folder / "amia_tokens_by_modality.png")
        written.append("amia_tokens_by_modality.png")
    if example is not None and example.get("picks"):
        plot_selected_tokens(example["image"], example["labels"], example["picks"], example["block"],
                             report.get("family", ""), example.get("base_side"), folder / "amia_selected_tokens.png")
        written.append("amia_selected_tokens.png")
    return written
