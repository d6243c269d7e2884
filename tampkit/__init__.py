"""tampkit: TAMP pruning of multimodal LLMs, its baselines, and their evaluation.

The library below the CLI is plain PyTorch + transformers: it imports neither Prefect, MLflow nor
DVC, so every algorithm is a function that tests can call directly.
"""

__version__ = "0.1.0"
