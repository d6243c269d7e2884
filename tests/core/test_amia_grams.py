"""The tiled (upper-triangle, mirrored) Gram matrices AMIA reads (issue 20): the same entries as one
plain product, and on real block outputs the same picks as the plain-product Grams the code used
before and as the naive oracle (tests/amia_naive.py)."""

from __future__ import annotations

import pytest
import torch
from amia_naive import naive_select

from tampkit.calibration import load_calibration
from tampkit.core import output_grams
from tampkit.core.amia import AmiaParams, amia_select_batch
from tampkit.core.diversity import cosine_gram
from tampkit.core.output_grams import OutputGrams, symmetric_product, weight_gram, widens
from tampkit.engine.attention_rows import record_last_rows
from tampkit.engine.runner import capture_block_inputs, observe_linears, run_block
from tampkit.models import load_model
from tampkit.models.adapters import find_linears

CPU = torch.device("cpu")


@pytest.mark.parametrize("n", [1, 2, 7, 128, 255, 256, 257, 300, 531, 640])
@pytest.mark.parametrize("d", [8, 576])
def test_symmetric_product_equals_the_plain_product_bit_for_bit(n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + d)
    y = torch.randn(n, d, generator=gen)
    if n > 5:
        y[5] = y[1]  # a duplicated token (exact ties in the Gram)
    unit = torch.nn.functional.normalize(y, dim=1)
    plain = cosine_gram(y)
    tiled = symmetric_product(unit, unit, torch.empty(n, n))
    assert torch.equal(tiled, plain)
    if n > 2 * output_grams.PANEL:  # tiled: the plain product is symmetric bit for bit at these sizes
        assert torch.equal(plain, plain.T)  # (small ones may not be: n = 7, d = 576 is not here)


def _old_grams(items: list[tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The Gram matrices as the code computed them before the tiling: one plain product each."""
    grams = []
    for linear, x, y in items:
        if widens(linear):
            out = (x @ weight_gram(linear)) @ x.T
            norms = out.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
            grams.append(out.div_(norms[:, None]).div_(norms[None, :]))
        else:
            grams.append(cosine_gram(y))
    return torch.stack(grams)


def _observe_every_block(alias: str, nsamples: int, source: str = "builtin"):
    """Per block and sample: [(name, linear, x, y)], the attention row and the labels."""
    bundle = load_model(alias)
    encoded = [bundle.adapter.encode(bundle, s) for s in load_calibration(source, nsamples, 42)]
    inputs = capture_block_inputs(bundle, encoded, CPU)
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    for block in layers:
        seen: list[list] = [[] for _ in encoded]
        current = {}
        callback = lambda name, lin, x, y: seen[current["i"]].append((name, lin, x, y))  # noqa: E731
        with observe_linears(find_linears(block), callback), record_last_rows(block) as rows:
            outputs = run_block(block, inputs, CPU, lambda ctx: current.__setitem__("i", ctx.index))
        yield seen, list(rows), inputs.labels
        inputs.hidden = outputs


def _check_block(seen, rows, labels) -> int:
    compared = 0
    for sample, attention, lab in zip(seen, rows, labels):
        items = [(lin, x, y) for _, lin, x, y in sample]
        new, old = OutputGrams().stack(items), _old_grams(items)
        for index, (linear, _, _) in enumerate(items):
            if not widens(linear):
                assert torch.equal(new[index], old[index])
        new_picks = amia_select_batch(new, attention, lab, AmiaParams())
        old_picks = amia_select_batch(old, attention, lab, AmiaParams())
        for (name, linear, _, y), a, b in zip(sample, new_picks, old_picks):
            assert a.tolist() == b.tolist(), name
            compared += 1
    return compared


def test_tiled_grams_pick_what_plain_grams_pick_on_every_block_of_a_tiny_model(tiny_alias: str, monkeypatch) -> None:
    # Tiny samples have fewer tokens than two panels: shrink the panel so the tiling really runs.
    monkeypatch.setattr(output_grams, "PANEL", 32)
    compared = 0
    for index, (seen, rows, labels) in enumerate(_observe_every_block(tiny_alias, 3)):
        assert max(len(lab) for lab in labels) > 2 * output_grams.PANEL
        compared += _check_block(seen, rows, labels)
        if index == 1:  # and against the naive oracle, for the Linears whose Gram is the plain cosine one
            sample, attention, lab = seen[0], rows[0], labels[0]
            for name, linear, x, y in sample:
                if not widens(linear):
                    picks = amia_select_batch(OutputGrams().stack([(linear, x, y)]), attention, lab)[0]
                    assert picks.tolist() == naive_select(cosine_gram(y), attention, lab), name
    assert compared > 0


@pytest.mark.slow
def test_tiled_grams_pick_what_plain_grams_pick_on_smollm2_llava_next() -> None:
    # ~530-700 tokens per image sample: the default panel tiles every Gram (5-6 panels).
    compared = 0
    for index, (seen, rows, labels) in enumerate(_observe_every_block("smollm2-llava-next", 2, "builtin-images")):
        if index in (0, 1, 15, 29):
            compared += _check_block(seen, rows, labels)
        if index >= 29:
            break
    assert compared == 4 * 2 * 7
