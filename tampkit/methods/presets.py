"""The method names a user picks, as data: each is a scorer with an allocation.

Kept free of imports so that the config schema (and so every stage's fingerprint) can name the
methods without reaching the scorers' code; `methods.registry` builds the scorers.

| name      | scorer     | allocation |
|-----------|------------|------------|
| magnitude | magnitude  | uniform    |
| wanda     | wanda      | uniform    |
| sparsegpt | sparsegpt  | uniform    |
| owl       | wanda      | OWL        |
| das       | wanda      | DAS        |
| amia      | amia-wanda | uniform    |
| tamp      | amia-wanda | DAS        |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    scorer: str  # a key of methods.registry.SCORERS
    allocation: str  # "uniform", "das" or "owl" (see tampkit.engine.plan)
    #: False: the scorer reads only the weights (no calibration forward).
    calibrated: bool = True


PRESETS: dict[str, Preset] = {
    "magnitude": Preset("magnitude", "uniform", calibrated=False),
    "wanda": Preset("wanda", "uniform"),
    "sparsegpt": Preset("sparsegpt", "uniform"),
    "owl": Preset("wanda", "owl"),
    "das": Preset("wanda", "das"),
    "amia": Preset("amia-wanda", "uniform"),
    "tamp": Preset("amia-wanda", "das"),
}
