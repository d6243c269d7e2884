"""The method names a user picks, as data: each is a scorer with an allocation.

A user may also pick the two parts directly (`--scorer`, `--allocation`): every scorer goes with
every allocation; a pair that is a preset is named after it, any other `scorer+allocation`.

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
    allocation: str  # one of ALLOCATIONS (see tampkit.engine.plan)
    #: False: the scorer reads only the weights (no calibration forward).
    calibrated: bool = True


#: Scorers: how a matrix's weights are ranked (and, for SparseGPT, updated).
SCORERS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt", "amia-wanda", "amia-sparsegpt")
#: Allocations: how many weights each matrix loses (see tampkit.engine.plan).
ALLOCATIONS: tuple[str, ...] = ("uniform", "owl", "das", "ecoflap")
#: Scorers that read only the weights (no calibration forward).
WEIGHT_ONLY: tuple[str, ...] = ("magnitude",)
#: `prune.scorer` / `prune.allocation` value meaning "the one of `prune.method`".
FROM_METHOD = "method"

PRESETS: dict[str, Preset] = {
    "magnitude": Preset("magnitude", "uniform", calibrated=False),
    "wanda": Preset("wanda", "uniform"),
    "sparsegpt": Preset("sparsegpt", "uniform"),
    "owl": Preset("wanda", "owl"),
    "das": Preset("wanda", "das"),
    "amia": Preset("amia-wanda", "uniform"),
    "tamp": Preset("amia-wanda", "das"),
}


def resolve(method: str, scorer: str = FROM_METHOD, allocation: str = FROM_METHOD) -> Preset:
    """The scorer and allocation a run uses: the preset's, each replaced when given."""
    preset = PRESETS[method]
    scorer = preset.scorer if scorer == FROM_METHOD else scorer
    allocation = preset.allocation if allocation == FROM_METHOD else allocation
    return Preset(scorer, allocation, calibrated=scorer not in WEIGHT_ONLY)


def label(pair: Preset) -> str:
    """A preset's name when the pair is one (`tamp`), else `scorer+allocation` (`sparsegpt+das`)."""
    return next((name for name, p in PRESETS.items() if (p.scorer, p.allocation) == (pair.scorer, pair.allocation)),
                f"{pair.scorer}+{pair.allocation}")
