"""Pruning methods by name: how a matrix is scored (the method) and how sparsity is allocated.

| name      | scores             | allocation |
|-----------|--------------------|------------|
| magnitude | abs(W)             | uniform    |
| wanda     | Wanda              | uniform    |
| sparsegpt | OBS                | uniform    |
| owl       | Wanda              | OWL        |
| das       | Wanda              | DAS        |
| amia      | AMIA-Wanda         | uniform    |
| tamp      | AMIA-Wanda         | DAS        |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tampkit.core.errors import UsageError
from tampkit.methods.params import MethodParams
from tampkit.methods.amia_wanda import AmiaWanda
from tampkit.methods.base import PruningMethod, SampleContext
from tampkit.methods.magnitude import Magnitude
from tampkit.methods.sparsegpt import SparseGPT
from tampkit.methods.wanda import Wanda


@dataclass(frozen=True)
class MethodSpec:
    build: Callable[[MethodParams], PruningMethod]
    allocation: str  # "uniform", "das" or "owl" (see tampkit.engine.plan)


METHODS: dict[str, MethodSpec] = {
    "magnitude": MethodSpec(lambda p: Magnitude(), "uniform"),
    "wanda": MethodSpec(lambda p: Wanda(), "uniform"),
    "sparsegpt": MethodSpec(lambda p: SparseGPT(), "uniform"),
    "owl": MethodSpec(lambda p: Wanda(), "owl"),
    "das": MethodSpec(lambda p: Wanda(), "das"),
    "amia": MethodSpec(lambda p: AmiaWanda(p.amia()), "uniform"),
    "tamp": MethodSpec(lambda p: AmiaWanda(p.amia()), "das"),
}


def make_method(name: str, params: MethodParams | None = None) -> PruningMethod:
    if name not in METHODS:
        raise UsageError("--method", f"unknown method '{name}'", METHODS)
    method = METHODS[name].build(params or MethodParams())
    method.name = name
    return method


__all__ = ["METHODS", "MethodSpec", "PruningMethod", "SampleContext", "make_method"]
