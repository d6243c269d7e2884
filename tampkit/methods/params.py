"""Every constant of TAMP and OWL as one validated parameter set, defaults from the spec.

Kept apart from the CLI so the pipeline (params.yaml) and the benchmarks build the same object.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tampkit.core.amia import AmiaParams
from tampkit.core.errors import UsageError

DAS_SCORES = ("unweighted", "size")
INTRA_MODES = ("positive", "all")


@dataclass(frozen=True)
class MethodParams:
    s_max_offset: float = 0.1  # DAS: no matrix sparser than target + offset
    das_score: str = "unweighted"  # official: D_k alone; "size": D_k * n_k
    intra: str = "positive"  # intra-modality similarity over positive pairs only (official) or all pairs
    knn: int = 3
    suppression: float = 0.2
    stop: float = 0.1
    sigma: float = 1.0
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08

    def validate(self) -> MethodParams:
        if self.das_score not in DAS_SCORES:
            raise UsageError("--das-score", f"unknown value '{self.das_score}'", DAS_SCORES)
        if self.intra not in INTRA_MODES:
            raise UsageError("--intra", f"unknown value '{self.intra}'", INTRA_MODES)
        if not (math.isfinite(self.s_max_offset) and 0.0 <= self.s_max_offset <= 1.0):
            raise UsageError("--s-max-offset", f"must be in [0, 1], got {self.s_max_offset}")
        if self.knn < 0:
            raise UsageError("--knn", f"must be >= 0, got {self.knn}")
        for field, value in (("--suppression", self.suppression), ("--stop", self.stop), ("--owl-lambda", self.owl_lambda)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(field, f"must be a finite number >= 0, got {value}")
        for field, value in (("--sigma", self.sigma), ("--owl-threshold", self.owl_threshold)):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(field, f"must be a finite number > 0, got {value}")
        return self

    @property
    def positive_only(self) -> bool:
        return self.intra == "positive"

    def amia(self) -> AmiaParams:
        return AmiaParams(knn=self.knn, suppression=self.suppression, stop=self.stop, sigma=self.sigma,
                          positive_only=self.positive_only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
