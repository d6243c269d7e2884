"""MLflow logging of a pipeline result (tasks/tracking.py) on a tiny store built once: real
timestamps, the standard git tags, one parent run per result (a fully cached rerun tags the one
that is there), per-layer series off the parent, and a store at the repository root also when DVC
runs the experiment in a temporary copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tampkit.pipeline.params import Params, params_from_dict
from tampkit.pipeline.run import run_stage, run_stages
from tampkit.store.records import RECORD
from tampkit.pipeline.table import STAGES
from tampkit.pipeline.layout import Layout
from tasks import tracking
from tasks.compare import rows_from_mlflow
from tasks.tracking import artifact_root, log_pipeline_run, repository_root, tracking_uri

TINY = {"model": {"name": "tiny-llama"}, "calibration": {"nsamples": 4}, "prune": {"method": "tamp"}}
ENV = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")
ALL_REUSED = {s: True for s in STAGES}
NONE_REUSED = {s: False for s in STAGES}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """A finished pipeline run on tiny-llama (every stage computed once for the module)."""
    params = params_from_dict(TINY)
    root = tmp_path_factory.mktemp("store") / "artifacts"
    run_stages(params, Layout.under(root), progress=False)
    return params, root


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    return value


def _git_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "dvc.yaml").write_text("stages: {}\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args], cwd=folder, check=True,
                       capture_output=True)
    return folder


def _client(uri: str):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id


def _parents(uri: str) -> list:
    client, experiment = _client(uri)
    return [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags]


def _children(uri: str, parent: str) -> list:
    client, experiment = _client(uri)
    return [r for r in client.search_runs([experiment]) if r.data.tags.get("mlflow.parentRunId") == parent]


def test_metrics_carry_real_timestamps_and_the_run_the_standard_git_tags(
        store: tuple[Params, Path], uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, root = store
    repo = _git_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    before = int(time.time() * 1000)
    run_id = log_pipeline_run(params, Layout.under(root), reused=NONE_REUSED)
    after = int(time.time() * 1000)

    client, _ = _client(uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["git_dirty"] == "false"
    assert "git_commit" not in run.data.tags
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
    assert run.data.tags["params_hash"] == params.digest()
    checked = 0
    for run_ in [run, *_children(uri, run_id)]:
        for key in run_.data.metrics:
            for metric in client.get_metric_history(run_.info.run_id, key):
                assert before <= metric.timestamp <= after, (run_.info.run_name, key, metric.timestamp)
                checked += 1
    assert checked > 20 and "heldout_perplexity" in run.data.metrics

    (repo / "dvc.yaml").write_text("stages: {changed: 1}\n")  # a tracked file modified
    dirty = client.get_run(log_pipeline_run(params, Layout.under(root), reused=NONE_REUSED))
    assert dirty.data.tags["mlflow.source.git.commit"] == head and dirty.data.tags["git_dirty"] == "true"


def test_a_fully_reused_rerun_tags_the_logged_parent_instead_of_adding_one(store: tuple[Params, Path], uri: str) -> None:
    params, root = store
    layout = Layout.under(root)
    tags = {"driver": "prefect"}
    first = log_pipeline_run(params, layout, extra_tags=tags, reused=NONE_REUSED)
    assert len(_parents(uri)) == 1
    children = len(_children(uri, first))

    assert log_pipeline_run(params, layout, extra_tags=tags, reused=ALL_REUSED) == first
    assert log_pipeline_run(params, layout, extra_tags=tags, reused=ALL_REUSED) == first
    (parent,) = _parents(uri)
    assert parent.info.run_id == first and len(_children(uri, first)) == children
    assert parent.data.tags["reuse_count"] == "2" and parent.data.tags["last_seen"]

    # Any stage computed again: a new parent, as is a result logged by another driver.
    again = log_pipeline_run(params, layout, extra_tags=tags, reused={**ALL_REUSED, "evaluate": False})
    assert again != first and len(_parents(uri)) == 2
    other = log_pipeline_run(params, layout, extra_tags={"driver": "dvc"}, reused=ALL_REUSED)
    assert other not in (first, again) and len(_parents(uri)) == 3
    # The reused rerun now lands on the latest parent of that result.
    assert log_pipeline_run(params, layout, extra_tags=tags, reused=ALL_REUSED) == again
    assert len({p.data.tags["result"] for p in _parents(uri)}) == 1

    rows = rows_from_mlflow(uri)  # `tamp compare --mlflow`: parent runs only, one per setting
    assert len(rows) == 1 and rows[0]["source"] == again and rows[0]["method"] == "tamp"
    assert rows[0]["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_without_reuse_flags_a_stage_that_ran_again_adds_a_parent(
        store: tuple[Params, Path], uri: str, tmp_path: Path) -> None:
    """The DVC `track` stage knows no `reused`: the records on disk tell whether anything ran."""
    params, root = store
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    layout = Layout.under(copy)
    tags = {"driver": "dvc"}
    first = log_pipeline_run(params, layout, extra_tags=tags)
    assert log_pipeline_run(params, layout, extra_tags=tags) == first
    assert len(_parents(uri)) == 1

    (layout.metrics / RECORD).unlink()
    assert run_stage("evaluate", params, layout, progress=False)["reused"] is False
    second = log_pipeline_run(params, layout, extra_tags=tags)
    assert second != first and len(_parents(uri)) == 2
    assert log_pipeline_run(params, layout, extra_tags=tags) == second and len(_parents(uri)) == 2


def test_per_layer_series_live_on_a_nested_layers_run_not_on_the_parent(store: tuple[Params, Path], uri: str) -> None:
    params, root = store
    run_id = log_pipeline_run(params, Layout.under(root), reused=NONE_REUSED)
    client, _ = _client(uri)
    parent = client.get_run(run_id)
    series = set(tracking.LAYER_SERIES.values())
    assert not series & set(parent.data.metrics)
    assert parent.data.metrics["layer_achieved_sparsity_min"] <= parent.data.metrics["achieved_sparsity"] \
        <= parent.data.metrics["layer_achieved_sparsity_max"]
    for name in series:  # a scalar on the parent has one value, at step 0
        assert [m.step for m in client.get_metric_history(run_id, name + "_max")] == [0]

    children = {r.info.run_name: r for r in _children(uri, run_id)}
    assert set(children) == {*(s for s in STAGES if params.needs(s)), "layers"}  # no child for an unneeded stage
    assert "sensitivity" not in children and "stats" in children  # this store is TAMP's
    layers = children["layers"]
    assert set(layers.data.metrics) == series
    history = client.get_metric_history(layers.info.run_id, "layer_achieved_sparsity")
    assert [m.step for m in history] == [0, 1, 2]
    assert min(m.value for m in history) == pytest.approx(parent.data.metrics["layer_achieved_sparsity_min"])
    assert "layers.json" in {a.path for a in client.list_artifacts(run_id)}
    table = json.loads(Path(client.download_artifacts(run_id, "layers.json", str(root.parent / "dl"))).read_text())
    assert table["columns"][0] == "layer" and [row[0] for row in table["data"]] == [0, 1, 2]
    assert all(r.data.tags.get("stage") == name for name, r in children.items() if name != "layers")


def _dvc_temp_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A repository and, inside it, a copy like those `dvc exp run --temp` runs in."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    temp = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpxyz123"  # as dvc 3 lays them out
    (temp / ".dvc").mkdir(parents=True)
    (temp / "dvc.yaml").write_text("stages: {}\n")
    return repo, temp


def test_the_store_is_at_the_original_repository_root_in_a_dvc_temporary_workspace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, temp = _dvc_temp_workspace(tmp_path)
    monkeypatch.chdir(temp)
    # Only the folder: still the original repository, not the copy.
    assert repository_root() == repo.resolve()
    # What DVC sets for a queued/temp experiment's stage commands.
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.setenv("DVC_EXP_NAME", "fuzzy-bear")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    monkeypatch.setenv("DVC_STAGE", "track")
    assert tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert tracking_uri().startswith("sqlite:////")  # absolute
    assert artifact_root() == repo.resolve() / "mlartifacts"
    # Plain `dvc repro` sets DVC_ROOT to the workspace itself; a subfolder finds the root too.
    monkeypatch.delenv("DVC_ROOT")
    monkeypatch.chdir(repo)
    (repo / "sub").mkdir()
    assert tracking_uri(repo / "sub") == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    # MLFLOW_TRACKING_URI always wins.
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert tracking_uri(temp) == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert artifact_root() == tmp_path.resolve() / "mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(temp) == "http://127.0.0.1:5000" and artifact_root() is None


def test_the_track_stage_in_a_dvc_temporary_workspace_logs_to_the_original_repository(
        store: tuple[Params, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, root = store
    repo, temp = _dvc_temp_workspace(tmp_path)
    shutil.copytree(root, temp / "artifacts")
    (temp / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    monkeypatch.chdir(temp)
    for name, value in {"DVC_ROOT": str(repo), "DVC_EXP_NAME": "fuzzy-bear", "DVC_STAGE": "track"}.items():
        monkeypatch.setenv(name, value)
    assert tracking.main(["--out", "artifacts/mlflow_run.json"]) == 0

    out = json.loads((temp / "artifacts" / "mlflow_run.json").read_text())
    assert out["tracking_uri"] == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert (repo / "mlflow.db").is_file() and not (temp / "mlflow.db").exists()
    client, experiment = _client(out["tracking_uri"])
    assert client.get_experiment(experiment).artifact_location == (repo.resolve() / "mlartifacts").as_uri()
    assert (repo / "mlartifacts").is_dir() and not (temp / "mlartifacts").exists()
    run = client.get_run(out["run_id"])
    assert run.data.tags["driver"] == "dvc" and run.data.tags["dvc.exp_name"] == "fuzzy-bear"
    assert run.data.tags["mlflow.source.name"] == "dvc.yaml:track"
