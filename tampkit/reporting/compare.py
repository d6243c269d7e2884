"""`tamp compare`: method x sparsity x metric, from result folders (or MLflow runs, see
tasks/compare.py), as a table and as a plot of each score against sparsity per method.

A row is one pruning result: its model, method, structure, target sparsity and metrics. A run at
sparsity 0 prunes nothing and is labelled `dense`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCENE_TYPES = ("colour", "shape", "count", "relation", "presence")

#: Metrics shown by default, in this order (lower is better for perplexity and KL).
DEFAULT_METRICS = ("achieved_sparsity", "heldout_perplexity", "qa_exact_match", "qa_answer_logprob",
                   "scene_accuracy", "scene_retention", *(f"scene_accuracy_{k}" for k in SCENE_TYPES),
                   "agreement_kl", "agreement_top1")


#: The evaluate stage's copies of the dense model's metrics (the reference stage's) carry this prefix.
DENSE_PREFIX = "dense_"


def result_row(model: str, method: str, sparsity: float, structure: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "method": "dense" if sparsity == 0 else method, "sparsity": float(sparsity),
            "structure": structure, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def rows_from_folders(folders: Iterable[Path]) -> list[dict[str, Any]]:
    """Every artifact store at or below each folder (a `metrics/metrics.json` beside a
    `reports/tamp_report.json`), e.g. `artifacts/` or a sweep's `artifacts/sweep/`."""
    rows = []
    for folder in folders:
        for metrics_file in sorted(Path(folder).glob("**/metrics/metrics.json")):
            store = metrics_file.parent.parent
            report_file = store / "reports" / "tamp_report.json"
            if not report_file.exists():
                continue
            report = json.loads(report_file.read_text())
            rows.append(result_row(report["model"], report["method"], report["target_sparsity"], report["structure"],
                                   json.loads(metrics_file.read_text())) | {"source": str(store)})
    return rows


def reference_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reference a model's results carry (the dense model's metrics from the reference
    stage, and the reference prefixes of the installed evaluation suites, see `tampkit.evaluation.suites`: for the organism's scene_qa the blind
    baselines and uniform chance), taken from its dense row (else its first row), so a pruned model
    that falls to what a model that never looks gets is visibly blind."""
    from tampkit.evaluation.suites import reference_prefixes

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        source = next((r for r in mine if r["method"] == "dense"), mine[0])
        prefixes = {DENSE_PREFIX: "dense model (reference stage)", **reference_prefixes()}
        for order, (prefix, label) in enumerate(prefixes.items(), start=1):
            values = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
            if values:  # "reference": its place among the references (truthy)
                out.append({"model": model, "method": label, "sparsity": math.nan, "structure": "–",
                            "reference": order, **values})
    return out


def with_retention(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add `scene_retention` (scene accuracy / the same model's dense scene accuracy) where both exist."""
    dense = {r["model"]: r["scene_accuracy"] for r in rows if r["method"] == "dense" and r.get("scene_accuracy")}
    return [r | {"scene_retention": r["scene_accuracy"] / dense[r["model"]]}
            if "scene_accuracy" in r and r["model"] in dense else r for r in rows]


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By model, then structure (unstructured first), sparsity and method; reference rows last."""
    methods = ("dense", "magnitude", "wanda", "sparsegpt", "owl", "das", "amia", "tamp")
    rank = {m: i for i, m in enumerate(methods)}
    return sorted(rows, key=lambda r: (r["model"], r.get("reference", 0), r["structure"] != "unstructured", r["structure"],
                                       0.0 if r.get("reference") else r["sparsity"], rank.get(r["method"], 99), r["method"]))


def _with_references(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their reference rows added, retention filled in, in table order."""
    return _order(with_retention(rows + reference_rows(rows)))


def format_table(rows: list[dict[str, Any]], metrics: Iterable[str] | None = None) -> str:
    """A markdown table per model: method, sparsity, structure, then each metric that model has;
    the references its results carry (blind baselines, uniform chance) as the last rows."""
    rows = _with_references(rows)
    parts = []
    for model in dict.fromkeys(r["model"] for r in rows):
        wanted = [m for m in (metrics or DEFAULT_METRICS) if any(m in r for r in rows if r["model"] == model)]
        header = ["method", "sparsity", "structure", *wanted]
        lines = [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in (r for r in rows if r["model"] == model):
            cells = [f"*{r['method']}*" if r.get("reference") else r["method"],
                     "–" if r.get("reference") else f"{r['sparsity']:g}", r["structure"]]
            cells += [_cell(r.get(m)) for m in wanted]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "no results found"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def best_methods(rows: list[dict[str, Any]], metric: str, sparsities: Iterable[float], k: int,
                 higher_is_better: bool = True) -> list[str]:
    """The `k` methods with the best mean `metric` over the unstructured `sparsities` (methods that
    lack one of them are left out): the few a plot of many methods should draw."""
    wanted = set(sparsities)
    by_method: dict[str, dict[float, float]] = {}
    for r in rows:
        if not r.get("reference") and r["method"] != "dense" and r["structure"] == "unstructured" and metric in r \
                and r["sparsity"] in wanted:
            by_method.setdefault(r["method"], {})[r["sparsity"]] = r[metric]
    means = {m: sum(v.values()) / len(v) for m, v in by_method.items() if set(v) == wanted}
    return sorted(means, key=lambda m: (-means[m] if higher_is_better else means[m], m))[:k]


def plot_scores(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """One panel per model: `metric` against sparsity, one line per method (dense as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for r in _with_references(rows) if metric in r]
    references = [r for r in every if r.get("reference")]
    rows = [r for r in every if not r.get("reference")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and r["structure"] == "unstructured"]
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted((r["sparsity"], r[metric]) for r in mine if r["method"] == method)
            if method == "dense":
                ax.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="dense")
            else:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        for ref, style in zip((r for r in references if r["model"] == model), (":", "-.", (0, (1, 3)))):
            ax.axhline(ref[metric], color="grey", linestyle=style, linewidth=1, label=ref["method"])
        ax.set_title(model)
        ax.set_xlabel("sparsity")
        ax.set_ylabel(metric)
        if metric in ("heldout_perplexity",):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
