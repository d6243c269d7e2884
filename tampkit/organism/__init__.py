"""The model organism: generated scenes, a small LLaVA-NeXT trained on them here, its model card.

`NAMES` are its `--model` aliases (kept free of imports so that the model registry can name them
without importing the training code; tests check they match `model.SPECS`).
"""

NAMES: tuple[str, ...] = ("organism", "organism-mini")
