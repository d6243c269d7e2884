"""The model organism: generated scenes, a small LLaVA-NeXT trained on them here, its model card.

It plugs into the rest through the same registries as any other package's plug-in (pyproject.toml's
entry points): its `--model` aliases (`adapter`), the calibration source `scenes` (`calibration`),
the evaluation suite `scene_qa` (`scene_qa`); nothing outside it but the CLI and the lmms-eval
task imports it. `NAMES` are its aliases (kept free of imports so that the plug-in adapter can claim
them without importing the training code; tests check they match `model.SPECS`).
"""

NAMES: tuple[str, ...] = ("organism", "organism-mini")
