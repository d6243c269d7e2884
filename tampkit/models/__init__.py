"""Model adapters (where the decoder is, which tokens are which modality) and model loading."""

from tampkit.models.adapters import (
    Adapter,
    ModelBundle,
    adapter_for,
    find_decoder_layers,
    find_linears,
)
from tampkit.models.loading import ALIASES, load_model

__all__ = [
    "ALIASES",
    "Adapter",
    "ModelBundle",
    "adapter_for",
    "find_decoder_layers",
    "find_linears",
    "load_model",
]
