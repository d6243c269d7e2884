"""On the one real pretrained model we have: Wanda must keep more than magnitude does."""

from __future__ import annotations

import pytest
import torch

from budgets import uniform_counts

from tampkit.calibration import load_calibration
from tampkit.engine.masking import prune_blocks
from tampkit.evaluation import perplexity
from tampkit.core.types import Structure
from tampkit.methods.registry import make_method
from tampkit.models import load_model


@pytest.mark.slow
def test_wanda_beats_magnitude_and_stays_near_dense_on_smollm2() -> None:
    dense = perplexity(load_model("smollm2-135m"))
    samples = load_calibration("builtin", 32, 42)
    pruned = {}
    for method in ("magnitude", "wanda"):
        bundle = load_model("smollm2-135m")
        encoded = [bundle.adapter.encode(bundle, s) for s in samples]
        prune_blocks(bundle, encoded, make_method(method), uniform_counts(bundle, 0.5), Structure(),
                     torch.device("cpu"), progress=False)
        pruned[method] = perplexity(bundle)
    print(f"held-out perplexity: dense {dense:.2f}, magnitude {pruned['magnitude']:.2f}, wanda {pruned['wanda']:.2f}")
    assert dense < pruned["wanda"] < pruned["magnitude"]
    assert pruned["wanda"] < 3 * dense
