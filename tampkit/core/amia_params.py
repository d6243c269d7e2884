"""AMIA's constants (the spec's defaults), apart from its math: the config schema takes its
defaults from here without making every stage's fingerprint depend on the selection code."""

from __future__ import annotations

from dataclasses import dataclass

#: The token sets AMIA may select among (see `AmiaParams.scope`).
AMIA_SCOPES = ("all", "nontext")


@dataclass(frozen=True)
class AmiaParams:
    """The spec's constants; every one is a parameter."""

    knn: int = 3
    suppression: float = 0.2  # suppression weight exp(-suppression * d)
    stop: float = 0.1  # stop when MMD^2 < stop * sqrt(1 - rho)
    sigma: float = 1.0  # RBF kernel width
    positive_only: bool = True  # intra similarity terms of rho count positive pairs only (official)
    #: Which tokens AMIA selects among: "all" (the spec: every token, modalities mixed) or "nontext"
    #: (every text token kept, the selection run among the image/video/audio tokens only).
    scope: str = "all"
