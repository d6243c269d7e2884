"""Scorers by name, and the method presets built from them (see `methods.presets`)."""

from __future__ import annotations

from collections.abc import Callable

from tampkit.core.amia import AmiaParams
from tampkit.core.errors import UsageError
from tampkit.methods.amia_sparsegpt import AmiaSparseGPT
from tampkit.methods.amia_wanda import AmiaWanda
from tampkit.methods.base import PruningMethod
from tampkit.methods.magnitude import Magnitude
from tampkit.methods.presets import PRESETS, SCORERS as SCORER_NAMES
from tampkit.methods.sparsegpt import SparseGPT
from tampkit.methods.wanda import Wanda

#: scorer name -> a new scorer, given AMIA's constants (only AMIA-Wanda reads them).
SCORERS: dict[str, Callable[[AmiaParams], PruningMethod]] = {
    "magnitude": lambda a: Magnitude(),
    "wanda": lambda a: Wanda(),
    "sparsegpt": lambda a: SparseGPT(),
    "amia-wanda": lambda a: AmiaWanda(a),
    "amia-sparsegpt": lambda a: AmiaSparseGPT(a),
}


assert tuple(SCORERS) == SCORER_NAMES, "methods.presets.SCORERS names the scorers built here"


def make_scorer(scorer: str, amia: AmiaParams | None = None, name: str | None = None) -> PruningMethod:
    """A new scorer by name (see `methods.presets.SCORERS`); `name` labels it in reports."""
    if scorer not in SCORERS:
        raise UsageError("--scorer", f"unknown scorer '{scorer}'", SCORERS)
    method = SCORERS[scorer](amia or AmiaParams())
    method.name = name or scorer
    return method


def make_method(name: str, amia: AmiaParams | None = None) -> PruningMethod:
    """The scorer of method preset `name` (magnitude, wanda, ..., tamp)."""
    if name not in PRESETS:
        raise UsageError("--method", f"unknown method '{name}'", PRESETS)
    return make_scorer(PRESETS[name].scorer, amia, name)
