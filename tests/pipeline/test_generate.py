"""dvc.yaml and params.yaml follow from the stage table and the schema; a code edit reruns exactly
the stages that run that code (checked with DVC itself in a temporary repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tampkit.pipeline.generate import generated, stage_code
from tampkit.pipeline.imports import closure
from tampkit.pipeline.schema import KNOB
from tampkit.pipeline.table import STAGE_TABLE, STAGES, WHEN_READS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["dvc.yaml", "params.yaml"])
def test_the_committed_file_is_what_the_table_and_schema_generate(name: str) -> None:
    assert (REPO / name).read_text() == generated()[name], f"{name} is stale: run `tamp generate`"


def test_params_yaml_sets_every_knob_and_dvc_lists_the_keys_each_stage_reads() -> None:
    raw = yaml.safe_load(generated()["params.yaml"])
    assert {f"{s}.{k}" for s, values in raw.items() for k in values} == set(KNOB)
    dvc = yaml.safe_load(generated()["dvc.yaml"])
    assert list(dvc["stages"]) == [*STAGES, "track"]
    for stage in STAGE_TABLE:
        gate = [k for k in WHEN_READS if stage.when and k not in stage.reads]  # a lazy stage reruns when they change
        assert dvc["stages"][stage.name]["params"] == list(stage.reads) + gate
        assert dvc["stages"][stage.name]["cmd"] == f"tamp stage {stage.name}"


def test_a_stage_runs_the_code_its_module_imports_and_no_other() -> None:
    masks = set(stage_code("masks"))
    assert {"tampkit/core/amia.py", "tampkit/methods/amia_wanda.py", "tampkit/engine/masking.py"} <= masks
    for upstream in ("calibrate", "stats", "allocate"):
        assert "tampkit/core/amia.py" not in stage_code(upstream), upstream
    assert "tampkit/core/diversity.py" in stage_code("stats")
    assert "tampkit/calibration/data/heldout.txt" in stage_code("evaluate")  # package data beside a module it imports
    assert "tampkit.pipeline.stages.masks" in closure("tampkit.pipeline.stages.masks")


def _fake_commands(dvc: dict) -> dict:
    """Each stage's command replaced by one that writes its outputs (a new value each run)."""
    for entry in dvc["stages"].values():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in entry.get("outs", []) + entry.get("metrics", [])]
        writes = []
        for out in outs:
            target = f"{out}/content" if not Path(out).suffix else out
            writes.append(f"pathlib.Path({target!r}).parent.mkdir(parents=True, exist_ok=True); "
                          f"pathlib.Path({target!r}).write_text(json.dumps(time.time()))")
        entry["cmd"] = f"{sys.executable} -c \"import json, pathlib, time; {'; '.join(writes)}\""
    return dvc


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, check=True, env=env)


def test_editing_the_amia_code_makes_dvc_rerun_masks_and_everything_after_it(tmp_path: Path) -> None:
    dvc = _fake_commands(yaml.safe_load(generated()["dvc.yaml"]))
    dvc.pop("plots", None)
    code = {dep for entry in dvc["stages"].values() for dep in entry["deps"] if not dep.startswith("artifacts/")}
    for dep in code:
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / dep, tmp_path / dep)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (tmp_path / "params.yaml").write_text(generated()["params.yaml"])
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _dvc(tmp_path, "init", "-q")
    _dvc(tmp_path, "repro", "-q")
    assert json.loads(_dvc(tmp_path, "status", "--json").stdout or "{}") == {}
    amia = tmp_path / "tampkit/core/amia.py"
    amia.write_text(amia.read_text() + "\n# edited\n")
    changed = json.loads(_dvc(tmp_path, "status", "--json").stdout)
    assert set(changed) == {"masks", "prune", "evaluate", "track"}, changed


def test_the_store_layout_has_a_folder_for_every_stage_and_output_of_the_table() -> None:
    from tampkit.pipeline.layout import Layout

    folders = {s.folder for s in STAGE_TABLE} | {out.path.split("/")[0] for s in STAGE_TABLE for out in s.outs}
    assert set(Layout.__dataclass_fields__) == folders
    layout = Layout.under("root")
    assert all(layout.folder(s.name).name == s.folder for s in STAGE_TABLE)
