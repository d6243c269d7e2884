"""Evaluation suites that packages add: by name, through the entry point group `tampkit.suites`.

A suite scores a pruned model on its own items; the evaluate stage runs the one a knob names
(`evaluate.scene_qa` runs the suite `scene_qa`, which this package's organism registers the same way
any other package would)::

    [project.entry-points."tampkit.suites"]
    scene_qa = "tampkit.organism.scene_qa:SCENE_QA_SUITE"

The entry point names a `Suite`:
- `score(bundle, limit, device, progress) -> (metrics, per-item records)`: flat numeric metrics and
  one JSON-able record per item; `limit` 0 means every item, otherwise the first `limit`;
- `agreement_inputs(bundle, limit)`, optional: the model inputs dense agreement is measured on when
  the suite runs (a model trained on its own data has no words for the built-in held-out prose);
- `reference_prefixes`: metric-name prefix -> label of the reference results its metrics carry
  (what a model that never looks scores, chance), which `tamp compare` shows as the last rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tampkit.core.entry_points import group_points, load_point
from tampkit.core.errors import UsageError

if TYPE_CHECKING:
    import torch

    from tampkit.models.adapters import ModelBundle

GROUP = "tampkit.suites"


@dataclass(frozen=True)
class Suite:
    """An evaluation suite (see the module docstring)."""

    score: Callable[[ModelBundle, int, torch.device | str, bool], tuple[dict[str, Any], list[dict[str, Any]]]]
    agreement_inputs: Callable[[ModelBundle, int], list[dict[str, torch.Tensor]]] | None = None
    reference_prefixes: Mapping[str, str] = field(default_factory=dict)


def suite_names() -> list[str]:
    """The installed suites, in name order (none of them imported)."""
    return [point.name for point in group_points(GROUP)]


def get_suite(name: str) -> Suite:
    """The installed suite called `name`; a UsageError when there is none or it does not load."""
    point = next((p for p in group_points(GROUP) if p.name == name), None)
    if point is None:
        raise UsageError("suite", f"no evaluation suite '{name}' is installed", suite_names() or "none installed")
    loaded = load_point(point, "suite")
    if loaded is None:
        raise UsageError("suite", f"evaluation suite '{name}' ({point.value}) failed to load (see the warning above)")
    if not isinstance(loaded, Suite):
        raise UsageError("suite", f"evaluation suite '{name}' ({point.value}) is not a tampkit Suite")
    return loaded


def reference_prefixes() -> dict[str, str]:
    """Every installed suite's reference prefixes, in suite name order (a suite that fails to load
    contributes none, with one warning line)."""
    out: dict[str, str] = {}
    for point in group_points(GROUP):
        loaded = load_point(point, "suite")
        if isinstance(loaded, Suite):
            out.update(loaded.reference_prefixes)
    return out
