"""The suite never reads or writes the real home: conftest.py points every cache into a per-process
temporary folder before anything is imported. Checked on the variables, on what the libraries
resolved from them at import, and on a dataset load that writes a cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REAL_HOME_ENV, ROOT_ENV, SESSION_FOLDER, _cache_environment

REAL_HOME = Path(os.environ[REAL_HOME_ENV]).resolve()


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_every_cache_variable_points_into_this_processs_own_temporary_folder() -> None:
    assert SESSION_FOLDER.name == os.environ.get("PYTEST_XDIST_WORKER", "main")  # one folder per worker
    assert SESSION_FOLDER.parent == Path(os.environ[ROOT_ENV])
    assert not _inside(SESSION_FOLDER, REAL_HOME) and REAL_HOME != Path(os.environ["HOME"]).resolve()
    expected = _cache_environment(SESSION_FOLDER)
    assert len(expected) >= 20
    for name, value in expected.items():
        assert os.environ[name] == value, name
        assert _inside(value, SESSION_FOLDER) and not _inside(value, REAL_HOME), name
    assert _inside(Path.home(), SESSION_FOLDER) and _inside(os.path.expanduser("~/.cache"), SESSION_FOLDER)


def test_libraries_resolved_their_caches_from_the_redirected_variables() -> None:
    """Most libraries read these variables once, at import: so conftest must set them first."""
    import datasets
    import huggingface_hub.constants as hub
    import matplotlib
    import torch
    from prefect.settings import get_current_settings

    resolved = {
        "hub": hub.HF_HUB_CACHE, "hf_home": hub.HF_HOME, "datasets": datasets.config.HF_DATASETS_CACHE,
        "modules": datasets.config.HF_MODULES_CACHE, "matplotlib": matplotlib.get_cachedir(),
        "matplotlib config": matplotlib.get_configdir(), "torch hub": torch.hub.get_dir(),
        "prefect": get_current_settings().home,
    }
    for what, path in resolved.items():
        assert _inside(path, SESSION_FOLDER) and not _inside(path, REAL_HOME), (what, path)


def test_a_dataset_load_writes_its_cache_here_and_nothing_under_the_real_home(tmp_path: Path) -> None:
    """lmms-eval's local tasks load JSON data through `datasets`, which caches Arrow files (the
    suite used to leave them in ~/.cache/huggingface/datasets)."""
    import datasets

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"q": f"question {i}", "a": i}) + "\n" for i in range(5)))
    loaded = datasets.load_dataset("json", data_files={"test": str(data)}, split="test")
    assert loaded["a"] == [0, 1, 2, 3, 4]
    files = [Path(f["filename"]) for f in loaded.cache_files]
    assert files and all(_inside(f, SESSION_FOLDER) and f.is_file() for f in files)
    config_folder = next(p for p in files[0].parents if p.parent.name == "json").name  # default-<fingerprint>
    real_cache = REAL_HOME / ".cache" / "huggingface" / "datasets"
    assert not any(real_cache.rglob(f"*{config_folder}*")) if real_cache.is_dir() else True


def test_subprocesses_inherit_the_redirection() -> None:
    code = "import os, json; print(json.dumps({k: os.environ.get(k) for k in ('HOME', 'HF_HOME', 'PREFECT_HOME')}))"
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert all(value is not None and _inside(value, SESSION_FOLDER) for value in out.values()), out


def test_hypothesis_draws_the_same_examples_every_run_without_deadlines() -> None:
    from hypothesis import settings

    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    assert settings.get_current_profile_name() == profile
    assert settings.default.deadline is None and settings.default.print_blob
    assert settings.default.derandomize == (profile == "ci") and (settings.default.database is None) == (profile == "ci")
