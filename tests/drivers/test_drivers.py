"""The three ways users drive the pipeline, for real and offline, on a tiny alias:
`dvc repro` in a temporary copy of the repo, the Prefect flows (in process, cached on rerun),
a local Prefect server serving `tamp/full` and `prefect deployment run`; MLflow afterwards."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ppl_reference import reference_perplexity
from workspace import isolated_env, mlflow_runs, run_ok, workspace

from tampkit.pipeline.table import STAGES
from tampkit.evaluation.qa import normalize_answer
from tampkit.organism.scene_qa import test_questions as scene_test_questions  # not a test


def test_dvc_repro_runs_end_to_end_then_is_up_to_date_and_exp_run_changes_only_downstream(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    env = isolated_env(work)
    run_ok(["git", "init", "-q"], work, env)
    run_ok(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "add", "-A"], work, env)
    run_ok(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "init"], work, env)
    first = run_ok(["dvc", "repro"], work, env)
    for stage in ("calibrate", "stats", "allocate", "masks", "prune", "evaluate", "track"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((work / "artifacts" / "metrics" / "metrics.json").read_text())
    assert abs(metrics["achieved_sparsity"] - 0.5) < 1e-3
    # the perplexity DVC's evaluate stage wrote is the one of the checkpoint its prune stage wrote
    assert metrics["heldout_perplexity"] == pytest.approx(reference_perplexity(work / "artifacts" / "pruned"), rel=1e-6)
    assert "up to date" in run_ok(["dvc", "status"], work, env).stdout
    _check_dvc_plots(run_ok(["dvc", "plots", "show", "--json"], work, env).stdout)
    again = run_ok(["dvc", "repro"], work, env)
    assert "Running stage" not in again.stdout and again.stdout.count("didn't change") == len(STAGES) + 1  # + track
    run_ok(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "add", "-A"], work, env)
    run_ok(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "run"], work, env)
    exp = run_ok(["dvc", "exp", "run", "-S", "prune.sparsity=0.6"], work, env)
    assert "Stage 'calibrate' didn't change" in exp.stdout and "Stage 'stats' didn't change" in exp.stdout
    assert "Running stage 'masks'" in exp.stdout
    metrics = json.loads((work / "artifacts" / "metrics" / "metrics.json").read_text())
    assert metrics["target_sparsity"] == 0.6 and abs(metrics["achieved_sparsity"] - 0.6) < 1e-3
    client, runs = mlflow_runs(work)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.params["prune.sparsity"] for r in parents) == ["0.5", "0.6"]
    assert all(r.data.tags["driver"] == "dvc" for r in parents)
    assert all(len(r.data.tags["mlflow.source.git.commit"]) == 40 for r in parents)


def _check_dvc_plots(shown: str, blocks: int = 3) -> None:
    """What `dvc plots show` draws: allocated and achieved sparsity per block as two series on one
    plot, the allocation as one series per matrix type, and the report's PNGs as image plots."""
    plots = json.loads(shown)["data"]

    def series(name: str) -> dict[str, list[int]]:
        (plot,) = plots[name]
        assert plot["type"] == "vega"
        found: dict[str, list[int]] = {}
        for row in plot["content"]["data"]["values"]:
            found.setdefault(row["field"], []).append(int(row["layer"]))
        return found

    sparsity = series("sparsity_by_layer")
    assert sorted(sparsity) == ["achieved_sparsity", "allocated_sparsity"]
    assert all(layers == list(range(blocks)) for layers in sparsity.values())
    by_type = series("allocation_by_matrix_type")
    assert sorted(by_type) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert all(layers == list(range(blocks)) for layers in by_type.values())
    for png in ("sparsity_by_layer", "diversity_by_layer", "amia_selected_tokens"):  # the flow runs tamp
        assert plots[f"artifacts/reports/{png}.png"][0]["type"] == "image"


_FLOWS_SCRIPT = """
import json
from flows.full import full
from flows.sweep import sweep
first = full()
second = full()
third = full(overrides={"prune.sparsity": 0.6})
swept = sweep(methods=["wanda", "tamp"], sparsities=[0.5, 0.6])
print("RESULT " + json.dumps({"first": first, "second": second, "third": third, "sweep": swept}))
"""


def test_prefect_flows_cache_every_unchanged_task_and_log_to_mlflow(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    proc = run_ok([sys.executable, "-c", _FLOWS_SCRIPT], work, isolated_env(work))
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert set(result["first"]["states"].values()) == {"Completed"}
    assert set(result["second"]["states"].values()) == {"Cached"}
    third = result["third"]["states"]
    assert third["calibrate"] == third["stats"] == "Cached" and third["masks"] == "Completed"
    # The sweep computes calibration and statistics once for all four combinations.
    assert set(result["sweep"]["shared"].values()) == {"Completed"}
    assert len(result["sweep"]["rows"]) == 4
    assert all(abs(row[3] - row[1]) < 1e-3 for row in result["sweep"]["rows"])

    client, runs = mlflow_runs(work)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    # the fully cached second run adds no parent: it is the first one, tagged as seen again
    assert result["second"]["mlflow_run_id"] == result["first"]["mlflow_run_id"]
    assert len(parents) == 2 + 4
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        # a child per stage the result needs: the statistics for DAS/TAMP, not for Wanda; no ECoFLaP here
        needed = ["calibrate", "stats", "allocate", "masks", "prune", "reference", "evaluate"]
        if parent.data.tags["method"] == "wanda":
            needed.remove("stats")
        assert sorted(r.data.tags["stage"] for r in children if "stage" in r.data.tags) == sorted(needed)
        assert parent.data.tags["params_hash"] and parent.data.tags["result"]
        assert "heldout_perplexity" in parent.data.metrics and "layer_achieved_sparsity" not in parent.data.metrics
        assert "dense_heldout_perplexity" in parent.data.metrics  # the dense model's, beside the pruned one
        layers = next(r for r in children if r.info.run_name == "layers")
        history = client.get_metric_history(layers.info.run_id, "layer_achieved_sparsity")
        assert [m.step for m in history] == [0, 1, 2]
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"params.yaml", "reports", "metrics", "allocation", "layers.json"} <= artifacts
    compared = run_ok(["tamp", "compare", "--mlflow", "--metrics", "heldout_perplexity"], work, isolated_env(work)).stdout
    assert compared.count("| tamp |") == 2 and compared.count("| wanda |") == 2  # latest run per method x sparsity
    cached = next(p for p in parents if p.info.run_id == result["second"]["mlflow_run_id"])
    assert cached.data.tags["reuse_count"] == "1"
    third = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["third"]["mlflow_run_id"]]
    reused = {r.data.tags["stage"]: r.data.tags["reused"] for r in third if "stage" in r.data.tags}
    assert reused == {"calibrate": "True", "stats": "True", "allocate": "False", "masks": "False", "prune": "False",
                      "reference": "True", "evaluate": "False"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_local_prefect_server_serves_tamp_full_and_runs_it(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = isolated_env(work, PREFECT_API_URL=api, PREFECT_UI_ENABLED="false")
    logs = work / "logs"
    logs.mkdir()
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=work,
                              env=env, stdout=(logs / "server.log").open("w"), stderr=subprocess.STDOUT)
    served = None
    try:
        _wait_for(f"{api}/health", 120)
        served = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=work, env=env,
                                  stdout=(logs / "serve.log").open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:  # the deployment exists once `serve` has registered it
            listed = subprocess.run(["prefect", "deployment", "ls"], cwd=work, env=env, capture_output=True, text=True,
                                    check=False)
            if "tamp/full" in listed.stdout:
                break
            assert time.monotonic() < deadline, (logs / "serve.log").read_text()[-3000:]
            time.sleep(1)
        run = run_ok(["prefect", "deployment", "run", "tamp/full", "-p", 'overrides={"prune.sparsity": 0.6}',
                    "--watch", "--watch-timeout", "300"], work, env, timeout=360)
        assert "Completed" in run.stdout, run.stdout[-2000:]
    finally:
        for proc in (served, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    metrics = json.loads((work / "artifacts" / "metrics" / "metrics.json").read_text())
    assert metrics["target_sparsity"] == 0.6
    _, runs = mlflow_runs(work)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.data.params["prune.sparsity"] for r in parents] == ["0.6"]


_ORGANISM_SWEEP = """
import json
from flows.sweep import sweep
swept = sweep(methods=["wanda", "tamp"], sparsities=[0.6], nm_structures=["2:4"], overrides={
    "model.name": "organism-mini", "calibration.source": "scenes", "calibration.nsamples": 8,
    "evaluate.perplexity": False, "evaluate.image_qa": False, "evaluate.scene_qa": True, "evaluate.limit": 40})
print("RESULT " + json.dumps(swept))
"""


def test_sweep_on_organism_mini_scores_scene_questions_at_each_sparsity_and_2of4(tmp_path: Path) -> None:
    """The organism is trained once per machine (shared cache), then swept like any model."""
    work = workspace(tmp_path)
    proc = run_ok([sys.executable, "-c", _ORGANISM_SWEEP], work, isolated_env(work))
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert sorted(result["states"]) == ["tamp-0.6", "tamp-2of4", "wanda-0.6", "wanda-2of4"]
    questions = {q.id: q for q in scene_test_questions()[:40]}
    for method, sparsity, structure, achieved, _ppl, accuracy, _run_id in result["rows"]:
        assert abs(achieved - sparsity) < 1e-3
        # the sweep's accuracy is the share of the 40 logged answers that are right, judged here
        # from each prediction against the question's own answer (not the log's "correct" field)
        state = f"{method}-{'2of4' if structure == '2:4' else sparsity}"
        logged = json.loads((work / "artifacts" / "sweep" / state / "metrics" / "samples.json").read_text())["scene_qa"]
        assert [r["id"] for r in logged] == list(questions)
        right = [normalize_answer(r["prediction"]) == questions[r["id"]].answer for r in logged]
        assert accuracy == sum(right) / len(right)
        assert json.loads((work / "artifacts" / "sweep" / state / "metrics" / "metrics.json").read_text())[
            "scene_accuracy"] == accuracy
    nm = json.loads((work / "artifacts" / "sweep" / "wanda-2of4" / "reports" / "tamp_report.json").read_text())
    assert nm["structure"] == "2:4"
    compared = run_ok(["tamp", "compare", "artifacts/sweep", "--metrics", "scene_accuracy,scene_accuracy_count,agreement_kl"],
                    work, isolated_env(work)).stdout
    assert "### organism-mini" in compared and compared.count("| 2:4 |") == 2
    metrics = json.loads((work / "artifacts" / "sweep" / "tamp-0.6" / "metrics" / "metrics.json").read_text())
    assert metrics["agreement_positions"] > 0 and "scene_accuracy_presence_adversarial" in metrics
