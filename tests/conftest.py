"""Shared fixtures. Everything runs offline: tiny aliases are built from configs in-process.

Before anything heavy is imported (pytest imports this file before the test modules, and before
xdist starts its workers), every cache and home the code or its libraries write to is pointed into
a temporary folder for the session, so a test run never reads or writes the real home (~/.cache,
~/.config, ~/.prefect ...). The controller makes the folder; each xdist worker (and a plain
`-n 0` run) gets its own sub-folder, so two workers never share a writable cache. Subprocesses the
tests start inherit the environment. The folder is removed when the controller exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The real home, remembered before HOME is redirected (workers inherit it from the controller).
REAL_HOME_ENV = "TAMPKIT_TESTS_REAL_HOME"
#: The session's temporary root, made by the controller and inherited by the workers.
ROOT_ENV = "TAMPKIT_TESTS_ROOT"


def _cache_environment(folder: Path) -> dict[str, str]:
    """Every home/cache variable read by the code and its libraries, pointed into `folder`."""
    home, cache, config = folder / "home", folder / "cache", folder / "config"
    hf = cache / "huggingface"
    return {
        "HOME": str(home),  # Path.home(), "~" in any library, git/dvc/mlflow user config
        "XDG_CACHE_HOME": str(cache), "XDG_CONFIG_HOME": str(config),
        "XDG_DATA_HOME": str(folder / "data"), "XDG_STATE_HOME": str(folder / "state"),
        # huggingface_hub, transformers, datasets, evaluate; the legacy names too, in case the
        # calling shell sets them (they would win over HF_HOME)
        "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "HUGGINGFACE_HUB_CACHE": str(hf / "hub"),
        "HF_ASSETS_CACHE": str(hf / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf / "assets"), "HF_MODULES_CACHE": str(hf / "modules"),
        "HF_DATASETS_CACHE": str(hf / "datasets"), "HF_XET_CACHE": str(hf / "xet"),
        "HF_EVALUATE_CACHE": str(hf / "evaluate"), "HF_METRICS_CACHE": str(hf / "metrics"),
        # lmms-eval: its datasets cache (else HF_DATASETS_CACHE) and its request cache (else inside
        # site-packages)
        "LMMS_EVAL_DATASETS_CACHE": str(hf / "datasets"), "LM_HARNESS_CACHE_PATH": str(cache / "lmms_eval"),
        # torch hub and compile caches (the inductor default is /tmp/torchinductor_<user>, shared)
        "TORCH_HOME": str(cache / "torch"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "MPLCONFIGDIR": str(config / "matplotlib"),  # matplotlib's config and font cache
        "PREFECT_HOME": str(folder / "prefect"),  # Prefect's settings and its local server database
        # DVC: user config, and the site cache that defaults to the machine-wide /var/tmp/dvc
        "DVC_GLOBAL_CONFIG_DIR": str(config / "dvc"), "DVC_SITE_CACHE_DIR": str(cache / "dvc-site"),
    }


def _isolate_caches() -> Path:
    os.environ.setdefault(REAL_HOME_ENV, str(Path.home()))
    root = os.environ.get(ROOT_ENV)
    if root is None:  # the controller (or a run without xdist): make the session folder
        root = tempfile.mkdtemp(prefix="tampkit-tests-")
        os.environ[ROOT_ENV] = root
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    folder = Path(root) / os.environ.get("PYTEST_XDIST_WORKER", "main")
    for name, value in _cache_environment(folder).items():
        os.environ[name] = value
        Path(value).mkdir(parents=True, exist_ok=True)
    return folder


SESSION_FOLDER = _isolate_caches()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per subprocess it starts): two workers on two cores, not four threads
    # fighting over them. Set before torch is imported, so its pool is sized from it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Hypothesis: the same examples on every run ("ci", the default), no per-example deadline (a 2-core
# machine shared with other work makes timings noise), and a reproduction blob when one fails.
# HYPOTHESIS_PROFILE=dev draws new examples each run (and keeps failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, database=None)
settings.register_profile("dev", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_ALIASES = ("tiny-llama", "tiny-llava", "tiny-llava-next", "tiny-qwen2-vl")


@pytest.fixture(params=TINY_ALIASES)
def tiny_alias(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: results recorded as hashes (SparseGPT's kept weights move in
    the last bits with the thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
