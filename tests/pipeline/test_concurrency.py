"""Runs started together on one artifact store never share writable state: the second waits for
the first (the store's run lock), through the CLI and through the Prefect flow with MLflow; a
failure is never cached; `--force` / `refresh` rerun a stage on demand."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tampkit.pipeline.params import params_from_dict
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.layout import Layout
from workspace import isolated_env, mlflow_runs, workspace

#: A quick pipeline: tiny-llama, two calibration samples, Wanda, two items per evaluation suite.
TINY = {"model": {"name": "tiny-llama"}, "calibration": {"nsamples": 2}, "prune": {"method": "wanda"},
        "evaluate": {"limit": 2, "agreement_text_windows": 1}}

_HOLDER = """
import sys, time
from pathlib import Path
from tampkit.pipeline.locks import run_lock
from tampkit.pipeline.layout import Layout
with run_lock(Layout.under(sys.argv[1])):
    print("held", flush=True)
    time.sleep(1.0)
    Path(sys.argv[1], "holder-done").write_text("1")
"""


def test_a_second_holder_of_the_run_lock_waits_for_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with run_lock(Layout.under(tmp_path)), run_lock(Layout.under(tmp_path)):  # re-entrant in one process
            assert (tmp_path / "holder-done").exists()  # we only got it once the other process let go
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0


def _tiny_params(path: Path) -> Path:
    params = params_from_dict(TINY)
    import yaml

    path.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return path


def test_two_cli_pipelines_started_together_on_one_store_both_succeed(tmp_path: Path) -> None:
    """Both start while the store is busy (this test holds its lock), so both are in flight at once;
    both must end well, one after the other, and leave a store whose files belong to one run."""
    params = _tiny_params(tmp_path / "params.yaml")
    store = tmp_path / "artifacts"
    tamp = str(Path(sys.executable).parent / "tamp")
    with run_lock(Layout.under(store)):
        procs = [subprocess.Popen([tamp, "pipeline", "--params", str(params), "--workdir", str(store), "--no-progress",
                                   "-S", f"prune.sparsity={s}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for s in (0.5, 0.7)]
        waited = [proc.stderr.readline() for proc in procs]  # each blocks on the lock and says so
    assert all("waiting for it to finish" in line for line in waited), waited
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out + err
        assert "evaluate: done" in out and "allocate: done" in out
    metrics = json.loads((store / "metrics" / "metrics.json").read_text())
    report = json.loads((store / "reports" / "tamp_report.json").read_text())
    assert metrics["target_sparsity"] == report["target_sparsity"] in (0.5, 0.7)
    assert abs(report["achieved_sparsity"] - report["target_sparsity"]) < 1e-3


_FLOW = """
import json, sys
from flows.full import full
result = full(overrides={"prune.sparsity": float(sys.argv[1])}, run_name="run " + sys.argv[1])
print("RESULT " + json.dumps(result))
"""


def _lines_until(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """Read the process's output line by line until a line holds `text` (or it ends / time is up)."""
    found: queue.Queue[list[str]] = queue.Queue()

    def read() -> None:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                break
        found.put(lines)

    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        return []


def test_two_flow_runs_started_together_each_log_their_own_results(tmp_path: Path) -> None:
    """Two `tamp` flow runs (each its own Prefect API, as two users would) on one store and one
    MLflow database, both started while the store is busy: each says in its Prefect log that it
    waits, and each MLflow run's params, metrics and report belong to that run."""
    work = workspace(tmp_path)
    procs, waited = [], []
    with run_lock(Layout.under(work / "artifacts")):
        for sparsity in ("0.5", "0.7"):
            env = isolated_env(work, PREFECT_HOME=str(work / f".prefect-{sparsity}"), PYTHONUNBUFFERED="1")
            procs.append(subprocess.Popen([sys.executable, "-c", _FLOW, sparsity], cwd=work, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for proc in procs:
            waited.append(_lines_until(proc, "waiting for it to finish", timeout=300))
    for lines in waited:  # the library's warning reached the flow run's Prefect log
        assert lines and "WARNING" in lines[-1] and "Flow run" in lines[-1], "".join(lines)[-2000:]
    results = {}
    for sparsity, proc in zip(("0.5", "0.7"), procs):
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        results[float(sparsity)] = json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])
    client, _ = mlflow_runs(work)
    for sparsity, result in results.items():
        assert set(result["states"].values()) <= {"Completed", "Cached"}
        run = client.get_run(result["mlflow_run_id"])
        assert float(run.data.params["prune.sparsity"]) == sparsity
        assert abs(run.data.metrics["achieved_sparsity"] - sparsity) < 1e-3
        with tempfile.TemporaryDirectory() as tmp:
            report = json.loads(Path(client.download_artifacts(run.info.run_id, "reports/tamp_report.json",
                                                               tmp)).read_text())
        assert report["target_sparsity"] == sparsity and abs(report["achieved_sparsity"] - sparsity) < 1e-3


def test_a_failed_suite_fails_the_stage_is_never_reused_and_force_reruns(tmp_path, monkeypatch) -> None:
    from tampkit.pipeline import run as pipeline
    from tampkit.pipeline.stages import evaluate as evaluate_stage
    from tampkit.core.errors import StageFailed
    from tampkit.store.records import read_record

    params = params_from_dict(TINY)
    layout = Layout.under(tmp_path)

    def broken(*_args, **_kwargs):
        raise FileNotFoundError("held-out text is on another disk")

    monkeypatch.setattr(evaluate_stage, "perplexity", broken)
    with pytest.raises(StageFailed, match="evaluate: failed .perplexity: FileNotFoundError"):
        pipeline.run_stages(params, layout, progress=False)
    record = read_record(layout.metrics)
    assert record["status"] == "failed" and "perplexity" in record["errors"]
    assert any("perplexity failed" in w for w in record["warnings"])
    monkeypatch.undo()
    records = pipeline.run_stages(params, layout, progress=False)  # the failure was not cached: it reruns
    assert not records["evaluate"]["reused"] and records["evaluate"]["status"] == "ok"
    assert all(records[s]["reused"] for s in ("calibrate", "stats", "allocate", "masks", "prune"))
    forced = pipeline.run_stages(params, layout, progress=False, force=("masks",))
    assert not forced["masks"]["reused"] and forced["masks"]["blocks_loaded"] == 0
    assert forced["masks"]["fingerprint"] == records["masks"]["fingerprint"] and forced["prune"]["reused"]


def test_the_runs_markdown_lists_every_warning_and_error_by_stage(tmp_path: Path) -> None:
    from tasks.summary import run_markdown

    params = params_from_dict({"model": {"name": "tiny-llama"}})
    stages = {"stats": {"state": "Completed", "record": {"seconds": 1.0, "warnings": ["stats: checksum mismatch in block_001"]}},
              "evaluate": {"state": "Failed", "record": {"seconds": 2.0, "errors": {"image_qa": "FileNotFoundError: x"},
                                                         "warnings": ["evaluate: image_qa failed: FileNotFoundError: x"]}}}
    markdown = run_markdown(params, Layout.under(tmp_path), stages)
    section = markdown.split("## Warnings and errors", 1)[1]
    assert "| evaluate | error | image_qa: FileNotFoundError: x |" in section
    assert "| stats | warning | stats: checksum mismatch in block_001 |" in section
    assert "| evaluate | warning | evaluate: image_qa failed: FileNotFoundError: x |" in section


_FAILING_FLOW = """
import json
from prefect.client.orchestration import get_client
from flows.full import full

overrides = {"evaluate.lmms_tasks": ["no_such_task"], "evaluate.image_qa": False, "evaluate.dense_agreement": False}
outcomes = []
for attempt in range(2):
    try:
        full(overrides=overrides)
        outcomes.append("completed")
    except Exception as err:
        outcomes.append(type(err).__name__)
with get_client(sync_client=True) as client:
    runs = [(r.name, r.run_count, r.state.name) for r in client.read_task_runs() if r.name.startswith("evaluate")]
    markdown = [a.data for a in client.read_artifacts() if a.type == "markdown"]
print("RESULT " + json.dumps({"outcomes": outcomes, "evaluate": runs, "markdown": markdown}))
"""


def test_a_failed_stage_fails_its_prefect_task_retries_fire_and_the_next_run_does_not_cache_it(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _FAILING_FLOW], cwd=work, env=isolated_env(work), capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert result["outcomes"] == ["StageFailed", "StageFailed"]
    # one evaluate task run per flow run, each tried three times (two retries), none of them Cached
    assert sorted((count, state) for _, count, state in result["evaluate"]) == [(3, "Failed"), (3, "Failed")]
    assert len(result["markdown"]) == 2
    for markdown in result["markdown"]:
        assert "## Warnings and errors" in markdown
        assert "| evaluate | error | lmms:no_such_task: unknown lmms-eval task 'no_such_task' |" in markdown
