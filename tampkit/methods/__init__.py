"""Pruning methods by name."""

from __future__ import annotations

from collections.abc import Callable

from tampkit.errors import UsageError
from tampkit.methods.base import PruningMethod, SampleContext
from tampkit.methods.magnitude import Magnitude
from tampkit.methods.sparsegpt import SparseGPT
from tampkit.methods.wanda import Wanda

METHODS: dict[str, Callable[[], PruningMethod]] = {
    "magnitude": Magnitude,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
}


def make_method(name: str) -> PruningMethod:
    if name not in METHODS:
        raise UsageError("--method", f"unknown method '{name}'", METHODS)
    return METHODS[name]()


__all__ = ["METHODS", "PruningMethod", "SampleContext", "make_method"]
