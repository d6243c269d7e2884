"""Scorers by name, and the method presets built from them (see `methods.presets`)."""

from __future__ import annotations

from collections.abc import Callable

from tampkit.core.amia import AmiaParams
from tampkit.core.errors import UsageError
from tampkit.methods.amia_wanda import AmiaWanda
from tampkit.methods.base import PruningMethod
from tampkit.methods.magnitude import Magnitude
from tampkit.methods.presets import PRESETS
from tampkit.methods.sparsegpt import SparseGPT
from tampkit.methods.wanda import Wanda

#: scorer name -> a new scorer, given AMIA's constants (only AMIA-Wanda reads them).
SCORERS: dict[str, Callable[[AmiaParams], PruningMethod]] = {
    "magnitude": lambda a: Magnitude(),
    "wanda": lambda a: Wanda(),
    "sparsegpt": lambda a: SparseGPT(),
    "amia-wanda": lambda a: AmiaWanda(a),
}


def make_method(name: str, amia: AmiaParams | None = None) -> PruningMethod:
    """The scorer of method preset `name` (magnitude, wanda, ..., tamp)."""
    if name not in PRESETS:
        raise UsageError("--method", f"unknown method '{name}'", PRESETS)
    method = SCORERS[PRESETS[name].scorer](amia or AmiaParams())
    method.name = name
    return method
