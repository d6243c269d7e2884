"""The `lmms_eval.models` entry point: called by lmms-eval while it builds its model registry."""

from __future__ import annotations

from typing import Any


def manifest() -> Any:
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="tampkit", simple_class_path="tampkit.lmms.model.TampkitLMM")
