"""Every scorer with every allocation (issue 18, item 1): each pair prunes its exact budget; a
preset given as its two parts is the preset, bit for bit; N:M stays uniform and says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from golden_hashes import masks_hash, weights_hash

from tampkit.cli import main
from tampkit.methods.presets import ALLOCATIONS, PRESETS, SCORERS, Preset, label, resolve

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prune(out: Path, *flags: str) -> dict:
    assert main(["prune", "--model", "tiny-llava", "--nsamples", "4", "--calibration", "builtin-images", "--no-plots",
                 "--no-progress", "--out", str(out), *flags]) == 0
    return json.loads((out / "tamp_report.json").read_text())


def test_labels_name_presets_and_spell_out_other_pairs() -> None:
    assert all(label(resolve(name)) == name for name in PRESETS)
    assert label(Preset("sparsegpt", "das")) == "sparsegpt+das"
    assert resolve("tamp", scorer="sparsegpt") == Preset("sparsegpt", "das")
    assert resolve("wanda", allocation="owl") == Preset("wanda", "owl")  # the owl preset's pair
    assert not resolve("tamp", scorer="magnitude").calibrated


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_a_preset_given_as_its_scorer_and_allocation_is_the_preset_bit_for_bit(tmp_path: Path, method: str) -> None:
    pair = PRESETS[method]
    report = _prune(tmp_path / "o", "--method", "wanda", "--scorer", pair.scorer, "--allocation", pair.allocation,
                    "--sparsity", "0.5")
    assert report["method"] == method
    _prune(tmp_path / "preset", "--method", method, "--sparsity", "0.5")
    assert masks_hash(tmp_path / "o") == masks_hash(tmp_path / "preset")
    assert weights_hash(tmp_path / "o") == weights_hash(tmp_path / "preset")


@pytest.mark.parametrize("scorer", SCORERS)
def test_every_pair_prunes_exactly_its_budget(tmp_path: Path, scorer: str) -> None:
    for allocation in ALLOCATIONS:
        report = _prune(tmp_path / allocation, "--scorer", scorer, "--allocation", allocation, "--sparsity", "0.6")
        total = sum(m["shape"][0] * m["shape"][1] for m in report["matrices"])
        planned = sum(round(m["target_sparsity"] * m["shape"][0] * m["shape"][1]) for m in report["matrices"])
        # exact: uniform and OWL prune floor(N s); DAS keeps floor(N (1 - s)) (its water-filling counts kept weights)
        assert planned == (total - math.floor(total * 0.4) if allocation in ("das", "ecoflap") else math.floor(total * 0.6))
        assert report["scorer"] == scorer and report["allocation"] == allocation
        assert report["achieved_sparsity"] * total == planned or scorer == "sparsegpt"  # SparseGPT may add zeros
        assert all(m["achieved_sparsity"] >= m["target_sparsity"] - 1e-12 for m in report["matrices"])


def test_an_allocation_under_n_m_is_uniform_and_says_so(tmp_path: Path, capsys) -> None:
    report = _prune(tmp_path / "o", "--scorer", "sparsegpt", "--allocation", "das", "--sparsity", "0.5",
                    "--structure", "2:4")
    assert report["allocation"] == "uniform (2:4)"
    assert "das does not apply to 2:4" in capsys.readouterr().err


def test_amia_scope_nontext_keeps_every_text_token_of_every_sample(tmp_path: Path) -> None:
    report = _prune(tmp_path / "o", "--method", "amia", "--amia-scope", "nontext", "--sparsity", "0.5",
                    "--workdir", str(tmp_path / "store"))
    manifest = json.loads((tmp_path / "store" / "calibration" / "manifest.json").read_text())
    text = sum(row["modalities"]["text"] for row in manifest["samples"]) / len(manifest["samples"])
    spec = _prune(tmp_path / "spec", "--method", "amia", "--sparsity", "0.5")
    for block, spec_block in zip(report["blocks"], spec["blocks"]):
        assert block["amia_selected_tokens"]["text"] == pytest.approx(text)
        assert spec_block["amia_selected_tokens"]["text"] < text  # the spec's selection drops text tokens


def test_the_default_output_folder_is_named_after_the_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # out/<model>-<label>-<sparsity>: a sparsegpt+das run must not land in (or clobber) tamp's folder.
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--model", "tiny-llava", "--nsamples", "2", "--no-plots", "--no-progress",
                 "--scorer", "sparsegpt", "--allocation", "das", "--sparsity", "0.5"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny-llava-sparsegpt+das-0.5"]
