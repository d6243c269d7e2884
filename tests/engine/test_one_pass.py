"""One dense forward per block for the Wanda family under dense propagation (issue 20, item 2): the
stats pass measuring a selection scorer beside the dense statistics, and masks from stored scalers,
against the two passes run separately (`dense_pass` alone, then `prune_blocks` with dense
propagation): the same statistics, scalers, summaries and masks, bit for bit; and in the pipeline
(tamp, das, amia, wanda presets), resume included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tampkit.calibration import load_calibration
from tampkit.core.types import Structure
from tampkit.engine.dense_stats import dense_pass
from tampkit.engine.masking import prune_blocks, prune_from_scalers
from tampkit.engine.plan import plan_counts
from tampkit.methods.registry import make_scorer
from tampkit.models import load_model
from tampkit.pipeline import one_pass
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.params import Params, params_from_dict
from tampkit.pipeline.run import run_stage, run_stages
from tampkit.pipeline.stages.masks import BLOCKS_FILE
from tampkit.store.block_store import BlockStore

CPU = torch.device("cpu")


def _same_file(a: Path, b: Path) -> bool:
    """Same metadata (fingerprint, checksum, record) and tensors; not bytes (safetensors writes the
    metadata's keys in a per-process order)."""
    with safe_open(str(a), framework="pt") as one, safe_open(str(b), framework="pt") as two:
        if one.metadata() != two.metadata() or set(one.keys()) != set(two.keys()):
            return False
        return all(torch.equal(one.get_tensor(k), two.get_tensor(k)) for k in one.keys())


def _encoded(bundle, n: int = 4, seed: int = 3):
    return [bundle.adapter.encode(bundle, s) for s in load_calibration("builtin", n, seed)]


@pytest.mark.parametrize("scorer", ["wanda", "amia-wanda"])
def test_one_forward_gives_the_two_passes_statistics_and_masks_bit_for_bit(tiny_alias: str, scorer: str,
                                                                           tmp_path: Path) -> None:
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle)
    # two passes: the dense statistics, then the scorer's own measurement forward (dense propagation)
    plain = dense_pass(bundle, encoded, CPU, True, True, False, None)
    plan = plan_counts(bundle, "das", 0.6, Structure(), Params().allocation, plain)
    method = make_scorer(scorer)
    method.example_sample = 0
    two = prune_blocks(load_model(tiny_alias), encoded, method, plan.counts, Structure(), CPU, "dense", progress=False)
    # one pass: the statistics with the selection measured in the same forward, masks from scalers
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    stats_store = BlockStore(tmp_path / "stats", "fp", "stats")
    selection = make_scorer(scorer)
    selection.example_sample = 0
    selected = BlockStore(tmp_path / "stats" / "selection", "fp-selection", "stats (selection)")
    both = dense_pass(bundle, encoded, CPU, True, True, False, stats_store, selection, selected)
    assert both.terms == plain.terms
    assert both.scalers.keys() == plain.scalers.keys()
    assert all(torch.equal(both.scalers[k], plain.scalers[k]) for k in plain.scalers)
    assert sorted(selected.computed) == list(range(len(layers)))

    def scalers(index: int):
        tensors, record = selected.load(index)
        return tensors, record["summary"]

    one = prune_from_scalers(load_model(tiny_alias), scalers, plan.counts, Structure(), CPU, progress=False)
    assert one.masks.keys() == two.masks.keys() and one.planned == two.planned
    assert all(torch.equal(one.masks[k], two.masks[k]) for k in two.masks)
    assert json.loads(json.dumps(one.blocks)) == json.loads(json.dumps(two.blocks))
    if scorer == "amia-wanda":
        assert all(b["amia_selected"] for b in one.blocks) and "amia_example" in one.blocks[0]
    else:  # the selection's scalers are the dense pass's own Wanda scalers
        for index in range(len(layers)):
            tensors, _ = selected.load(index)
            assert all(torch.equal(v, plain.scalers[f"{prefix}.{index}.{k}"]) for k, v in tensors.items())


TINY = {"model": {"name": "tiny-llava-next"}, "calibration": {"nsamples": 4}}
#: Up to the masks (the prune and evaluation stages only read them).
TO_MASKS = ("calibrate", "stats", "sensitivity", "allocate", "masks")


def _masks(layout: Layout) -> dict[str, torch.Tensor]:
    """Every block's packed masks from the masks stage's files."""
    masks = {}
    for path in sorted(layout.masks.glob("block_*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            masks.update({f"{path.stem}.{k}": handle.get_tensor(k) for k in handle.keys()})
    return masks


def _run(tmp_path: Path, name: str, prune: dict, one: bool, monkeypatch) -> tuple[Layout, dict]:
    """The pipeline with dense propagation; `one=False` turns the one-pass path off (two passes)."""
    with monkeypatch.context() as patch:
        if not one:
            patch.setattr(one_pass, "one_pass_scorer", lambda params: None)
        layout = Layout.under(tmp_path / name / "artifacts")
        records = run_stages(params_from_dict({**TINY, "prune": {**prune, "propagation": "dense"}}), layout,
                             stages=TO_MASKS, progress=False)
    return layout, records


@pytest.mark.parametrize("method,expect_one", [("tamp", True), ("das", True), ("amia", False), ("wanda", False)])
def test_pipeline_one_pass_equals_two_passes_for_each_preset(tmp_path: Path, monkeypatch, method: str,
                                                            expect_one: bool) -> None:
    one, one_records = _run(tmp_path, "one", {"method": method}, True, monkeypatch)
    two, two_records = _run(tmp_path, "two", {"method": method}, False, monkeypatch)
    # amia, wanda: uniform allocation, no stats stage; their masks stage is one forward already
    assert one_records["masks"]["from_stored_scalers"] is expect_one
    assert two_records["masks"]["from_stored_scalers"] is False
    assert ("selection" in one_records["stats"]) is (method == "tamp")
    ours, theirs = _masks(one), _masks(two)
    assert ours.keys() == theirs.keys() and len(ours) == 3 * 7
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((one.masks / BLOCKS_FILE).read_text()) == json.loads((two.masks / BLOCKS_FILE).read_text())
    if expect_one:  # the dense statistics are the same files, under the same fingerprint
        assert one_records["stats"]["fingerprint"] == two_records["stats"]["fingerprint"]
        for path in sorted(two.stats.glob("block_*.safetensors")):
            assert _same_file(one.stats / path.name, path)


def test_one_pass_resumes_and_stale_selection_files_fall_back_to_the_forward(tmp_path: Path, monkeypatch) -> None:
    straight, _ = _run(tmp_path, "straight", {"method": "tamp"}, True, monkeypatch)
    params = params_from_dict({**TINY, "prune": {"method": "tamp", "propagation": "dense"}})
    broken = Layout.under(tmp_path / "broken" / "artifacts")
    run_stages(params, broken, stages=("calibrate",), progress=False)
    run_stage("stats", params, broken, progress=False)
    # an interrupted stats stage: the last block's files and the record gone; then a selection file lost
    (broken.stats / "stage.json").unlink()
    (broken.stats / "block_002.safetensors").unlink()
    (broken.stats / one_pass.SELECTION_FOLDER / "block_002.safetensors").unlink()
    (broken.stats / one_pass.SELECTION_FOLDER / "block_001.safetensors").unlink()
    record = run_stage("stats", params, broken, progress=False)
    assert (record["blocks_loaded"], record["blocks_computed"]) == (1, 2)
    assert record["selection"]["blocks_computed"] == 2
    for stage in TO_MASKS[2:]:
        run_stage(stage, params, broken, progress=False)
    for folder in (Path("."), Path(one_pass.SELECTION_FOLDER)):
        for path in sorted((straight.stats / folder).glob("block_*.safetensors")):
            assert _same_file(broken.stats / folder / path.name, path)
    ours, theirs = _masks(straight), _masks(broken)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # selection files of other AMIA constants (a stats stage reused from another run): the masks stage
    # measures with its own forward, and gets the masks that forward gives
    other = params_from_dict({**TINY, "prune": {"method": "tamp", "propagation": "dense"}, "amia": {"knn": 2}})
    masks = run_stage("masks", other, broken, progress=False)
    assert masks["from_stored_scalers"] is False and masks["blocks_computed"] == 3
