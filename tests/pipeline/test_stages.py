"""The pipeline stages over the artifact store: up-to-date checks, kill-and-resume, damaged files,
params.yaml validation, and agreement with `tamp prune`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ppl_reference import reference_perplexity
from safetensors.torch import load_file

from tampkit.store.artifacts import MASKS_FILE, load_masks
from tampkit.store.block_store import KILL_ENV
from tampkit.core.errors import UsageError
from tampkit.pipeline.params import load_params, params_from_dict
from tampkit.pipeline.run import run_stage, run_stages
from tampkit.pipeline.table import RESUMABLE, STAGES
from tampkit.pipeline.layout import Layout

TINY = {"model": {"name": "tiny-llava"}, "calibration": {"nsamples": 4}, "prune": {"method": "tamp"}}


def _params_file(folder: Path, raw: dict) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _tamp(*args: str, env: dict | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tampkit.cli", *args, "--no-progress"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def _block_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Copies: safetensors maps the file, and the tests edit files in place."""
    return {p.name: {k: v.clone() for k, v in load_file(str(p)).items()} for p in sorted(folder.glob("block_*.safetensors"))}


def test_second_run_reuses_every_stage_and_a_sparsity_change_keeps_the_statistics(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path / "artifacts")
    first = run_stages(params_from_dict(TINY), layout, progress=False)
    assert not any(r["reused"] for r in first.values())
    assert first["stats"]["blocks_computed"] == first["masks"]["blocks_computed"] == 3
    at_half = json.loads((layout.metrics / "metrics.json").read_text())["heldout_perplexity"]
    assert at_half == pytest.approx(reference_perplexity(layout.pruned), rel=1e-6)
    again = run_stages(params_from_dict(TINY), layout, progress=False)
    assert all(r["reused"] for r in again.values())
    changed = run_stages(params_from_dict({**TINY, "prune": {"method": "tamp", "sparsity": 0.6}}), layout, progress=False)
    # sensitivity: its skipped record; reference: the dense model on the evaluation set reads no pruning knob
    assert [s for s in STAGES if changed[s]["reused"]] == ["calibrate", "stats", "sensitivity", "reference"]
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    assert metrics["achieved_sparsity"] == pytest.approx(0.6, abs=1e-3)
    # the evaluate stage scored the checkpoint the prune stage wrote for 0.6, not the one for 0.5
    assert metrics["heldout_perplexity"] == pytest.approx(reference_perplexity(layout.pruned), rel=1e-6)
    assert metrics["heldout_perplexity"] != pytest.approx(at_half, rel=1e-3)


@pytest.mark.parametrize("prune", [{"method": "tamp"}, {"method": "sparsegpt", "allocation": "ecoflap"}],
                         ids=["tamp", "sparsegpt+ecoflap"])
def test_sigkill_in_the_middle_then_resume_is_bit_identical(tmp_path: Path, prune: dict) -> None:
    params = params_from_dict({**TINY, "prune": prune})
    resumed = [s for s in RESUMABLE if params.needs(s)]  # tamp: stats, masks; ecoflap: sensitivity, masks
    assert len(resumed) == 2
    straight = Layout.under(tmp_path / "straight" / "artifacts")
    run_stages(params, straight, progress=False)
    broken_root = tmp_path / "broken"
    _params_file(broken_root, {**TINY, "prune": prune})
    broken = Layout.under(broken_root / "artifacts")
    for stage in STAGES:
        if stage in resumed:  # killed for real (SIGKILL) right after the middle block is on disk
            killed = _tamp("stage", stage, cwd=broken_root, env={**os.environ, KILL_ENV: f"{stage}:1"})
            assert killed.returncode == -signal.SIGKILL, killed.stderr
            folder = broken.folder(stage)
            assert sorted(p.name for p in folder.glob("block_*")) == ["block_000.safetensors", "block_001.safetensors"]
            assert not (folder / "stage.json").exists()  # unfinished: no record
        record = run_stage(stage, params, broken, progress=False)
        if stage in resumed:
            assert (record["blocks_loaded"], record["blocks_computed"]) == (2, 1)
    for stage in resumed:
        a, b = _block_tensors(straight.folder(stage)), _block_tensors(broken.folder(stage))
        assert a.keys() == b.keys() and len(a) == 3
        assert all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])
    ours, theirs = (load_masks(layout.pruned / MASKS_FILE) for layout in (straight, broken))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_damaged_block_file_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    params = params_from_dict(TINY)
    layout = Layout.under(tmp_path / "artifacts")
    run_stages(params, layout, progress=False)
    before = _block_tensors(layout.masks)
    block = layout.masks / "block_002.safetensors"
    data = bytearray(block.read_bytes())
    data[-1] ^= 0x01
    block.write_bytes(bytes(data))
    (layout.masks / "stage.json").unlink()
    record = run_stage("masks", params, layout, progress=False)
    assert any("checksum mismatch in block_002" in w for w in record["warnings"])  # kept in the stage record
    assert (record["blocks_loaded"], record["blocks_computed"]) == (2, 1)
    after = _block_tensors(layout.masks)
    assert all(torch.equal(before[f][k], after[f][k]) for f in before for k in before[f])


@pytest.mark.parametrize(("raw", "field"), [
    ({"prune": {"method": "obs"}}, "params: prune.method"),
    ({"prune": {"sparsity": 1.2}}, "params: prune.sparsity"),
    ({"prune": {"sparsty": 0.5}}, "params: prune.sparsty"),
    ({"amia": {"knn": "three"}}, "params: amia.knn"),
    ({"stats": {"intra": "most"}}, "params: stats.intra"),
    ({"model": {"device": "tpu"}}, "params: model.device"),
    ({"evaluation": {}}, "params: evaluation"),
])
def test_bad_params_give_one_line_naming_the_key(tmp_path: Path, raw: dict, field: str) -> None:
    with pytest.raises(UsageError, match=field):
        load_params(_params_file(tmp_path, raw))


def test_the_cli_rejects_bad_params_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    _params_file(tmp_path, {"prune": {"method": "obs"}})
    proc = _tamp("stage", "calibrate", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tamp: error: params: prune.method:")
    assert not (tmp_path / "artifacts").exists()


def test_a_stage_without_its_inputs_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="run `tamp stage calibrate` first"):
        run_stage("stats", params_from_dict(TINY), Layout.under(tmp_path), progress=False)


def test_the_repo_params_file_is_valid_and_lists_every_key() -> None:
    root = Path(__file__).resolve().parents[2]
    import yaml

    raw = yaml.safe_load((root / "params.yaml").read_text())
    assert {f"{s}.{k}" for s, v in raw.items() for k in v} == set(params_from_dict({}).flat())
    load_params(root / "params.yaml")


_ALTERED = {"model.name": "tiny-llama", "model.dtype": "float32", "model.device": "cpu", "model.offload": "disk",
            "calibration.source": "builtin", "calibration.nsamples": 5, "calibration.seed": 7, "stats.intra": "all",
            "prune.method": "wanda", "prune.sparsity": 0.6, "prune.structure": "2:4",
            "prune.propagation": "dense", "allocation.s_max_offset": 0.2, "allocation.das_score": "size",
            "allocation.owl_threshold": 4.0, "allocation.owl_lambda": 0.1, "allocation.zo_eps": 2e-3,
            "allocation.zo_seed": 7, "amia.knn": 4, "amia.suppression": 0.3,
            "amia.stop": 0.2, "amia.sigma": 2.0, "evaluate.perplexity": False, "evaluate.ppl_window": 128,
            "evaluate.image_qa": False, "evaluate.qa_max_new_tokens": 4, "evaluate.dense_agreement": False,
            "evaluate.agreement_text_windows": 2, "evaluate.limit": 3, "evaluate.lmms_tasks": ["tamp_image_qa"],
            "evaluate.scene_qa": True, "report.plots": False, "prune.scorer": "sparsegpt", "prune.allocation": "owl",
            "amia.scope": "nontext", "prune.save_format": "compressed"}


def test_altered_values_cover_every_key() -> None:
    assert set(_ALTERED) == set(params_from_dict({}).flat())


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(sorted(_ALTERED)), method=st.sampled_from(["wanda", "tamp", "owl"]),
       allocation=st.sampled_from(["method", "uniform", "das", "owl", "ecoflap"]))
def test_whether_a_stage_is_needed_depends_only_on_the_keys_dvc_lists_for_it(key: str, method: str,
                                                                             allocation: str) -> None:
    # DVC reruns a `when` stage only when WHEN_READS change: nothing else may change the answer.
    from tampkit.pipeline.params import apply_overrides
    from tampkit.pipeline.table import STAGE_TABLE, WHEN_READS

    base = {"prune.method": method, "prune.allocation": allocation}
    if key in WHEN_READS:
        return
    before = params_from_dict(apply_overrides({}, base))
    after = params_from_dict(apply_overrides({}, {**base, key: _ALTERED[key]}))
    assert all(before.needs(s.name) == after.needs(s.name) for s in STAGE_TABLE)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(sorted(_ALTERED)), stage=st.sampled_from(STAGES))
def test_a_stage_fingerprint_moves_exactly_with_the_keys_it_reads(key: str, stage: str) -> None:
    from tampkit.pipeline.params import apply_overrides
    from tampkit.pipeline.run import stage_fingerprint
    from tampkit.pipeline.table import STAGE

    base = params_from_dict({})
    changed = params_from_dict(apply_overrides({}, {key: _ALTERED[key]}))
    upstream = {u: {"fingerprint": "f" * 64} for u in ("calibrate",)}
    # model.name also enters every fingerprint as the model's identity
    reads = key in STAGE[stage].reads or key.split(".")[0] in STAGE[stage].reads or key == "model.name"
    differs = stage_fingerprint(stage, base, upstream) != stage_fingerprint(stage, changed, upstream)
    assert differs == reads


def test_the_pipeline_runs_an_audio_video_model_and_agrees_with_tamp_prune(tmp_path: Path) -> None:
    from tampkit.cli import main

    raw = {"model": {"name": "tiny-qwen2.5-omni"}, "calibration": {"source": "builtin-av", "nsamples": 4},
           "prune": {"method": "tamp"}, "evaluate": {"image_qa": False}}
    layout = Layout.under(tmp_path / "artifacts")
    run_stages(params_from_dict(raw), layout, progress=False)
    manifest = json.loads((layout.calibration / "manifest.json").read_text())
    assert all(row["media"] == ["video", "audio"] and set(row["modalities"]) == {"text", "video", "audio"}
               for row in manifest["samples"])
    assert main(["prune", "--model", "tiny-qwen2.5-omni", "--method", "tamp", "--sparsity", "0.5", "--nsamples", "4",
                 "--calibration", "builtin-av", "--no-plots", "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    ours, theirs = load_masks(layout.pruned / MASKS_FILE), load_masks(tmp_path / "cli" / MASKS_FILE)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    assert metrics["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) and metrics["agreement_top1"] < 1.0
