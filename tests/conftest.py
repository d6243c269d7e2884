"""Shared fixtures. Everything runs offline: tiny aliases are built from configs in-process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per subprocess it starts): two workers on two cores, not four threads
    # fighting over them. Set before torch is imported, so its pool is sized from it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

TINY_ALIASES = ("tiny-llama", "tiny-llava", "tiny-llava-next", "tiny-qwen2-vl")


@pytest.fixture(params=TINY_ALIASES)
def tiny_alias(request: pytest.FixtureRequest) -> str:
    return request.param
