"""A repo-shaped temporary workspace for the driver tests (DVC, Prefect, MLflow) and the
concurrency tests: the files a user's checkout has, isolated Prefect/MLflow state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tampkit.pipeline.params import params_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": {"name": "tiny-llava"}, "calibration": {"source": "builtin-images", "nsamples": 4},
        "prune": {"method": "tamp"}}


def workspace(tmp_path: Path, raw: dict | None = None) -> Path:
    """A repo-shaped folder: dvc.yaml, .dvc, tampkit/ (dvc.yaml's stages list its files), tasks/, flows/,
    params.yaml for the tiny alias."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, work / name)
    (work / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    for package in ("tampkit", "tasks", "flows"):
        shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "params.yaml").write_text(yaml.safe_dump(params_from_dict(raw or TINY).to_dict(), sort_keys=False))
    return work


def isolated_env(work: Path, **extra: str) -> dict[str, str]:
    """Isolated Prefect/MLflow state in `work`; this interpreter's scripts (dvc, prefect, tamp) first
    on PATH, as in the venv that `make test` runs from without activating it."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PREFECT_HOME": str(work / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / ".prefect-results"), "PYTHONPATH": str(work),
            "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def run_ok(args: list[str], work: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def mlflow_runs(work: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("tamp")
    return client, client.search_runs([experiment.experiment_id])
