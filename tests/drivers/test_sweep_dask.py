"""The sweep on Dask (`sweep(dask=True)`, a two-worker LocalCluster) against the sequential sweep on
the same points, on a tiny alias: the same masks bit for bit, one MLflow run per point, and the
points spread over more than one worker process. Plus the small pure pieces (cluster shape, URIs,
the command line) without a cluster."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from workspace import isolated_env, mlflow_runs, run_ok, workspace

import flows.sweep as sweep_module
from tampkit.core.errors import UsageError
from tasks.cluster import is_loopback, absolute_tracking_uri, environment_kept, local_cluster_shape

TINY_NEXT = {"model": {"name": "tiny-llava-next"}, "calibration": {"source": "builtin-images", "nsamples": 4},
             "prune": {"method": "tamp"},
             "evaluate": {"image_qa": False, "dense_agreement": False, "limit": 2}}
POINTS = ["wanda-0.5", "tamp-0.5"]

_SCRIPT = """
import json, os
from flows.sweep import sweep
points = dict(methods=["wanda", "tamp"], sparsities=[0.5])
sequential = sweep(workdir="artifacts/sequential", **points)
before = dict(os.environ)
on_dask = sweep(workdir="artifacts/dask", dask=True, dask_workers=2, **points)
print("RESULT " + json.dumps({"pid": os.getpid(), "sequential": sequential, "dask": on_dask,
                              "environment_kept": dict(os.environ) == before}))
"""


def _masks(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The masks stage's block files: file name -> its tensors."""
    return {f.name: load_file(f) for f in sorted(folder.glob("block_*.safetensors"))}


def test_dask_sweep_matches_the_sequential_sweep_point_for_point_on_two_worker_processes(tmp_path: Path) -> None:
    work = workspace(tmp_path, TINY_NEXT)
    env = isolated_env(work, DASK_TEMPORARY_DIRECTORY=str(work / "dask-scratch"))
    proc = run_ok([sys.executable, "-c", _SCRIPT], work, env)
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    sequential, on_dask = result["sequential"], result["dask"]
    assert sorted(on_dask["states"]) == sorted(sequential["states"]) == sorted(POINTS)
    assert on_dask["dask"]["workers"] == 2 and "workers" not in sequential
    assert result["environment_kept"]  # the LocalCluster's worker settings (OMP_NUM_THREADS=1 ...) not left behind

    # every point's masks, bit for bit
    for label in POINTS:
        expected, got = _masks(work / "artifacts" / "sequential" / label / "masks"), _masks(
            work / "artifacts" / "dask" / label / "masks")
        assert expected and sorted(got) == sorted(expected), label
        for name, tensors in expected.items():
            assert sorted(got[name]) == sorted(tensors), (label, name)
            for key, mask in tensors.items():
                assert got[name][key].dtype == mask.dtype and torch.equal(got[name][key], mask), (label, name, key)
        # the points ran their own stages there (the shared ones once, in the flow's process)
        assert {s: on_dask["states"][label][s] for s in ("allocate", "masks", "prune", "evaluate")} == dict.fromkeys(
            ("allocate", "masks", "prune", "evaluate"), "Completed")
    assert [row[:3] for row in on_dask["rows"]] == [row[:3] for row in sequential["rows"]]
    assert [row[3] for row in on_dask["rows"]] == [row[3] for row in sequential["rows"]]  # achieved sparsity

    # every point its own MLflow run, tagged with the worker that ran it
    run_ids = {label: row[-1] for label, row in zip(on_dask["states"], on_dask["rows"])}
    assert len(set(run_ids.values())) == len(POINTS)
    _, runs = mlflow_runs(work)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    on_dask_runs = {i: r for i, r in parents.items() if "dask_scheduler" in r.data.tags}
    assert set(on_dask_runs) == set(run_ids.values())
    assert len(parents) == 2 * len(POINTS)  # and the sequential sweep's, none reused across
    for label, run_id in run_ids.items():
        tags = on_dask_runs[run_id].data.tags
        assert on_dask_runs[run_id].info.run_name.endswith(f" {label}") and tags["driver"] == "prefect-sweep"
        assert tags["worker_pid"] == str(on_dask["workers"][label]["pid"])
        assert tags["worker_host"] == on_dask["workers"][label]["host"]
        assert on_dask_runs[run_id].data.metrics["achieved_sparsity"] == pytest.approx(float(label.rsplit("-", 1)[1]),
                                                                                      abs=1e-3)

    # ... in more than one worker process, none of them the flow's
    pids = {w["pid"] for w in on_dask["workers"].values()}
    assert len(pids) > 1 and result["pid"] not in pids


def test_local_cluster_shape_is_the_cores_at_most_one_worker_per_point(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.cluster as cluster

    monkeypatch.setattr(cluster, "cores", lambda: 8)
    assert local_cluster_shape(20) == (8, 1)
    assert local_cluster_shape(3) == (3, 2)  # three workers, the eight cores shared out
    assert local_cluster_shape(20, 2) == (2, 4)
    assert local_cluster_shape(1, 4) == (1, 8)
    assert local_cluster_shape(20, 2, 1) == (2, 1)
    with pytest.raises(UsageError, match="dask_workers"):
        local_cluster_shape(4, 0)
    with pytest.raises(UsageError, match="dask_threads"):
        local_cluster_shape(4, 2, 0)


def test_tracking_uri_made_absolute_and_loopback_scheduler_addresses() -> None:
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{Path('mlflow.db').resolve()}"
    assert absolute_tracking_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert absolute_tracking_uri("http://10.0.0.5:5000") == "http://10.0.0.5:5000"
    assert is_loopback("tcp://127.0.0.1:8786") and is_loopback("localhost:8786")
    assert not is_loopback("tcp://10.0.0.5:8786") and not is_loopback("tcp://scheduler.lan:8786")


def test_command_line_passes_the_dask_options_to_the_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(sweep_module, "sweep", lambda **kwargs: seen.update(kwargs) or {})
    sweep_module.main(["--methods", "wanda,tamp", "--sparsities", "0.5,0.7", "-S", "calibration.nsamples=8",
                       "--dask-address", "tcp://10.0.0.5:8786", "--dask-workers", "3", "--dask-threads", "4",
                       "--workdir", "out"])
    assert seen["methods"] == ["wanda", "tamp"] and seen["sparsities"] == [0.5, 0.7] and seen["workdir"] == "out"
    assert seen["overrides"] == {"calibration.nsamples": 8}
    assert seen["dask_address"] == "tcp://10.0.0.5:8786" and seen["dask_workers"] == 3 and not seen["dask"]
    assert seen["dask_threads"] == 4
    sweep_module.main([])
    assert seen["methods"] is None and seen["overrides"] is None and not seen["dask"] and seen["dask_address"] is None


def test_environment_kept_undoes_what_the_block_set_changed_or_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMPKIT_TEST_KEPT", "1")
    monkeypatch.setenv("TAMPKIT_TEST_GONE", "2")
    monkeypatch.delenv("TAMPKIT_TEST_NEW", raising=False)
    with environment_kept():
        os.environ["TAMPKIT_TEST_KEPT"] = "changed"
        del os.environ["TAMPKIT_TEST_GONE"]
        os.environ["TAMPKIT_TEST_NEW"] = "3"
    assert os.environ["TAMPKIT_TEST_KEPT"] == "1" and os.environ["TAMPKIT_TEST_GONE"] == "2"
    assert "TAMPKIT_TEST_NEW" not in os.environ
