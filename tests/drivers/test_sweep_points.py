"""The sweep's points: presets, or every scorer with every allocation, and one N:M point per scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.sweep import sweep_points
from tampkit.core.errors import UsageError
from tampkit.methods.presets import ALLOCATIONS, SCORERS


def test_presets_by_default_and_every_pair_when_asked(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  name: tiny-llava\n")
    presets = sweep_points(str(params), {}, ["wanda", "tamp"], [0.5, 0.7], ["2:4"])
    assert set(presets) == {*((m, s, "unstructured") for m in ("wanda", "tamp") for s in (0.5, 0.7)),
                            ("tamp", 0.5, "2:4"), ("wanda", 0.5, "2:4")}
    pairs = sweep_points(str(params), {}, None, [0.6], ["2:4"], scorers=list(SCORERS), allocations=list(ALLOCATIONS))
    unstructured = [k for k in pairs if k[2] == "unstructured"]
    assert len(unstructured) == len(SCORERS) * len(ALLOCATIONS)  # every pair, each under its own label
    assert {(pairs[k].pair().scorer, pairs[k].pair().allocation) for k in unstructured} == {
        (s, a) for s in SCORERS for a in ALLOCATIONS}
    nm = {k: p for k, p in pairs.items() if k[2] == "2:4"}
    assert len(nm) == len(SCORERS) and all(p.pair().allocation == "uniform" for p in nm.values())
    assert pairs[("tamp", 0.6, "unstructured")].pair().scorer == "amia-wanda"  # a pair that is a preset keeps its name
    assert pairs[("sparsegpt+ecoflap", 0.6, "unstructured")].needs("sensitivity")
    with pytest.raises(UsageError, match="prune.scorer"):
        sweep_points(str(params), {}, None, [0.6], scorers=["obs"])
