"""Shared fixtures. Everything runs offline: tiny aliases are built from configs in-process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_ALIASES = ("tiny-llama", "tiny-llava", "tiny-llava-next", "tiny-qwen2-vl")


@pytest.fixture(params=TINY_ALIASES)
def tiny_alias(request: pytest.FixtureRequest) -> str:
    return request.param
