"""ECoFLaP's zeroth-order block scores against slow references: the model's own loss, the same
perturbation applied to the whole model, and the exact directional derivative from autograd."""

from __future__ import annotations

import pytest
import torch

from tampkit.calibration import load_calibration
from tampkit.core.types import TEXT
from tampkit.engine.block_sensitivity import ecoflap_scores, losses_from, noise_seed, text_targets
from tampkit.engine.runner import capture_block_inputs
from tampkit.models import load_model
from tampkit.models.adapters import find_linears

CPU = torch.device("cpu")
EPS = 1e-3


def _encoded(bundle, n=3):
    return [bundle.adapter.encode(bundle, s) for s in load_calibration("builtin", n, 0)]


def _model_loss(bundle, batch, labels) -> torch.Tensor:
    """The model's own loss with every non-text position unpredicted (labels -100)."""
    target = batch["input_ids"].clone()
    target[0, labels != TEXT] = -100
    return bundle.model(**batch, labels=target, use_cache=False).loss


def _block_noise(block, seed, index, sample):
    generator = torch.Generator().manual_seed(noise_seed(seed, index, sample))
    return [torch.randn(l.weight.shape, generator=generator) for l in find_linears(block).values()]


def test_the_loss_from_captured_inputs_is_the_models_own_loss(tiny_alias: str) -> None:
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle)
    inputs = capture_block_inputs(bundle, encoded, CPU)
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    norm, head = bundle.adapter.output_head(bundle.model)
    targets = [text_targets(b["input_ids"], l) for b, l in zip(encoded, inputs.labels)]
    ours = losses_from(list(layers), 0, inputs, CPU, norm, head, targets)
    with torch.no_grad():
        theirs = [float(_model_loss(bundle, b, l)) for b, l in zip(encoded, inputs.labels)]
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def test_block_scores_equal_the_whole_model_perturbed_the_same_way(tiny_alias: str) -> None:
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle)
    scores = ecoflap_scores(bundle, encoded, CPU, EPS, 5, progress=False)
    labels = capture_block_inputs(bundle, encoded, CPU).labels
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    reference = []
    for index, block in enumerate(layers):
        weights = [l.weight for l in find_linears(block).values()]
        originals = [w.detach().clone() for w in weights]
        total = 0.0
        for i, (batch, label) in enumerate(zip(encoded, labels)):
            noise = _block_noise(block, 5, index, i)
            losses = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, w0, z in zip(weights, originals, noise):
                        w.copy_(w0 + sign * EPS * z)
                    losses.append(float(_model_loss(bundle, batch, label)))
            total += abs((losses[0] - losses[1]) / (2 * EPS))
        with torch.no_grad():
            for w, w0 in zip(weights, originals):
                w.copy_(w0)
        reference.append(total)
    assert scores == pytest.approx(reference, rel=1e-3, abs=1e-3)
    assert len(set(scores)) == len(scores) and min(scores) > 0  # not a constant: blocks really differ


def test_the_estimate_is_the_directional_derivative_and_follows_its_seed() -> None:
    # Central differences with eps = 1e-3 are exact to O(eps^2) but for fp32 rounding: the block score
    # must be sum_i |grad L_i . z_i| from autograd, within a percent.
    bundle = load_model("tiny-llava")
    encoded = _encoded(bundle)
    scores = ecoflap_scores(bundle, encoded, CPU, EPS, 5, progress=False)
    labels = capture_block_inputs(bundle, encoded, CPU).labels
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    exact = [0.0] * len(layers)
    for i, (batch, label) in enumerate(zip(encoded, labels)):
        bundle.model.zero_grad()
        _model_loss(bundle, batch, label).backward()
        for index, block in enumerate(layers):
            noise = _block_noise(block, 5, index, i)
            exact[index] += abs(sum(float((l.weight.grad * z).sum()) for l, z in zip(find_linears(block).values(), noise)))
    assert scores == pytest.approx(exact, rel=1e-2)
    assert ecoflap_scores(bundle, encoded, CPU, EPS, 5, progress=False) == scores  # deterministic
    assert ecoflap_scores(bundle, encoded, CPU, EPS, 6, progress=False) != scores  # the seed draws the noise
