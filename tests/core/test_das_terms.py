"""DAS terms from per-modality blocks and sums against the full-Gram reference, on random outputs
(hypothesis) and on real block outputs of a tiny LLaVA-NeXT (every Linear of every block)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tampkit.core.das_terms import das_terms
from tampkit.core.diversity import cosine_gram, similarity_terms


def _close(ours: dict[str, float], reference: dict[str, float]) -> None:
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@settings(max_examples=60)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), d_in=st.integers(2, 12), widen=st.booleans(),
       bias=st.booleans(), modalities=st.integers(1, 3), positive_only=st.booleans())
def test_equal_to_the_full_gram_terms(seed: int, n: int, d_in: int, widen: bool, bias: bool, modalities: int,
                                      positive_only: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(d_in, d_in * 2 if widen else max(1, d_in // 2), bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
        if bias:
            linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator))
    x = torch.randn(n, d_in, generator=generator)
    y = linear(x).detach()
    labels = torch.randint(0, modalities, (n,), generator=generator)
    _close(das_terms(linear, x, y, labels, positive_only), similarity_terms(cosine_gram(y), labels, positive_only))


def test_equal_on_real_block_outputs() -> None:
    from tampkit.calibration import load_calibration
    from tampkit.engine.runner import capture_block_inputs, observe_linears, run_block
    from tampkit.models import load_model
    from tampkit.models.adapters import find_linears

    bundle = load_model("tiny-llava-next")
    encoded = [bundle.adapter.encode(bundle, s) for s in load_calibration("builtin-images", 2, 0)]
    inputs = capture_block_inputs(bundle, encoded, torch.device("cpu"))
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    checked = 0
    for block in layers:
        seen: list = []
        with observe_linears(find_linears(block), lambda name, lin, x, y: seen.append((lin, x, y))):
            outputs = run_block(block, inputs, torch.device("cpu"))
        per_sample = len(seen) // len(inputs)
        for position in range(len(inputs)):
            for linear, x, y in seen[position * per_sample:(position + 1) * per_sample]:
                labels = inputs.labels[position]
                _close(das_terms(linear, x, y, labels), similarity_terms(cosine_gram(y), labels))
                checked += 1
        inputs.hidden = outputs
    assert checked == len(layers) * 7 * len(inputs)
