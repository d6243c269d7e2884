"""The engine against direct computations on tiny models: capture, Wanda statistics, propagation."""

from __future__ import annotations

import torch

from budgets import uniform_counts

from tampkit.calibration import load_calibration
from tampkit.engine.masking import decoder_linears, prune_blocks
from tampkit.core.masks import mask_per_row, row_counts
from tampkit.core.types import Structure
from tampkit.methods.registry import make_method
from tampkit.models import load_model
from tampkit.engine.runner import capture_block_inputs, run_block

CPU = torch.device("cpu")


def _encoded(bundle, n=6, seed=0):
    return [bundle.adapter.encode(bundle, s) for s in load_calibration("builtin", n, seed)]


def test_runner_reproduces_the_dense_forward(tiny_alias: str) -> None:
    """Replaying captured block-0 inputs block by block equals the model's own last hidden state."""
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle, 3)
    inputs = capture_block_inputs(bundle, encoded, CPU)
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    for block in layers:
        inputs.hidden = run_block(block, inputs, CPU)
    for i, batch in enumerate(encoded):
        with torch.no_grad():
            out = bundle.model(**batch, use_cache=False, output_hidden_states=True)
        # hidden_states[-1] is after the final norm in HF; compare the pre-norm stream via the norm
        norm = [m for n, m in bundle.model.named_modules() if n.endswith("language_model.norm") or n == "model.norm"][0]
        torch.testing.assert_close(norm(inputs.hidden[i]), out.hidden_states[-1], rtol=1e-4, atol=1e-5)


def test_wanda_masks_equal_direct_per_row_computation(tiny_alias: str) -> None:
    """Block 0: x^2 statistics from plain forward hooks on the dense model, then per-row pruning."""
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle, 5, seed=3)
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    names = [n for n in decoder_linears(bundle) if n.startswith(f"{prefix}.0.")]
    modules = dict(bundle.model.named_modules())
    sums = {n: torch.zeros(modules[n].in_features) for n in names}

    def make_hook(n: str):
        def hook(module, args, output) -> None:
            sums[n] += (args[0].reshape(-1, module.in_features).double() ** 2).sum(0).float()
        return hook

    hooks = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    with torch.no_grad():
        for batch in encoded:
            bundle.model(**batch, use_cache=False)
    for h in hooks:
        h.remove()
    dense = {n: modules[n].weight.detach().clone() for n in names}
    counts = uniform_counts(bundle, 0.5)
    result = prune_blocks(bundle, encoded, make_method("wanda"), counts, Structure(), CPU, progress=False)
    for n in names:
        scores = dense[n].abs() * torch.sqrt(sums[n] / len(encoded))[None, :]
        expected = mask_per_row(scores, row_counts(counts[n], scores.shape[0]))
        assert torch.equal(result.masks[n], expected), n
        assert torch.equal(modules[n].weight == 0, expected | (dense[n] == 0))


def test_pruned_and_dense_propagation_differ_only_after_block_zero() -> None:
    masks = {}
    for propagation in ("pruned", "dense"):
        bundle = load_model("tiny-llava-next")
        encoded = _encoded(bundle, 4)
        counts = uniform_counts(bundle, 0.6)
        masks[propagation] = prune_blocks(bundle, encoded, make_method("wanda"), counts, Structure(), CPU,
                                          propagation=propagation, progress=False).masks
    first = [n for n in masks["pruned"] if ".layers.0." in n]
    later = [n for n in masks["pruned"] if ".layers.0." not in n]
    assert all(torch.equal(masks["pruned"][n], masks["dense"][n]) for n in first)
    assert any(not torch.equal(masks["pruned"][n], masks["dense"][n]) for n in later)


def test_same_seed_gives_identical_masks_and_another_seed_does_not() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        bundle = load_model("tiny-llava")
        encoded = _encoded(bundle, 6, seed=seed)
        return prune_blocks(bundle, encoded, make_method("wanda"), uniform_counts(bundle, 0.5), Structure(), CPU,
                            progress=False).masks

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_exact_per_row_and_per_matrix_counts(tiny_alias: str) -> None:
    bundle = load_model(tiny_alias)
    encoded = _encoded(bundle, 3)
    counts = uniform_counts(bundle, 0.37)
    result = prune_blocks(bundle, encoded, make_method("wanda"), counts, Structure(), CPU, progress=False)
    for name, mask in result.masks.items():
        assert int(mask.sum()) == counts[name]
        assert torch.equal(mask.sum(1), row_counts(counts[name], mask.shape[0]))


def test_nm_masks_are_valid_for_every_method() -> None:
    for method in ("magnitude", "wanda", "sparsegpt"):
        bundle = load_model("tiny-llama")
        encoded = _encoded(bundle, 3)
        result = prune_blocks(bundle, encoded, make_method(method), uniform_counts(bundle, 0.5), Structure(2, 4),
                              CPU, progress=False)
        modules = dict(bundle.model.named_modules())
        for name, mask in result.masks.items():
            groups = mask.reshape(mask.shape[0], -1, 4)
            assert bool((groups.sum(-1) == 2).all()), (method, name)
            assert bool((modules[name].weight.reshape(mask.shape[0], -1, 4) == 0).sum(-1).ge(2).all())


def _dense_stats(bundle, encoded, folder):
    """The stats stage's pass over a block store (the only cache of the dense statistics)."""
    from tampkit.engine.dense_stats import dense_pass
    from tampkit.store.block_store import BlockStore

    store = BlockStore(folder, "f" * 64, "stats") if folder is not None else None
    stats = dense_pass(bundle, encoded, CPU, True, True, False, store)
    return stats, store is not None and not store.computed


def test_tamp_masks_are_bit_identical_across_runs_and_the_stored_statistics(tmp_path) -> None:
    from tampkit.engine.plan import plan_counts
    from tampkit.pipeline.params import Params

    def run(folder) -> tuple[dict[str, torch.Tensor], bool]:
        bundle = load_model("tiny-llava-next")
        encoded = _encoded(bundle, 5, seed=3)
        stats, stored = _dense_stats(bundle, encoded, folder)
        plan = plan_counts(bundle, "das", 0.6, Structure(), Params().allocation, stats)
        return prune_blocks(bundle, encoded, make_method("tamp"), plan.counts, Structure(), CPU, progress=False).masks, stored

    first, stored_first = run(tmp_path)
    second, stored_second = run(tmp_path)
    third, _ = run(None)
    assert (stored_first, stored_second) == (False, True)
    for name in first:
        assert torch.equal(first[name], second[name]) and torch.equal(first[name], third[name])


def test_corrupt_stored_statistics_are_recomputed_not_trusted(tmp_path, caplog) -> None:
    bundle = load_model("tiny-llava")
    encoded = _encoded(bundle, 3)
    good, _ = _dense_stats(bundle, encoded, tmp_path)
    first, second = sorted(tmp_path.glob("block_*.safetensors"))[:2]
    first.write_bytes(first.read_bytes()[:100])  # truncated
    data = bytearray(second.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a tensor: the header still parses
    second.write_bytes(bytes(data))
    again, stored = _dense_stats(bundle, encoded, tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.name == "tampkit" and r.levelname == "WARNING"]
    assert not stored and any("unreadable block_000" in w for w in warned)
    assert any("checksum mismatch in block_001" in w for w in warned)
    assert again.terms == good.terms
    assert all(torch.equal(again.scalers[k], good.scalers[k]) for k in good.scalers)
    _, stored = _dense_stats(bundle, encoded, tmp_path)
    assert stored  # the rewritten file is valid again


def test_amia_selecting_every_token_reproduces_wanda_exactly(tiny_alias: str) -> None:
    # A negative stop coefficient makes the MMD rule never fire: AMIA then selects all tokens, and its
    # statistic (mean x^2 over selected tokens) differs from Wanda's only by a constant factor.
    from tampkit.core.amia import AmiaParams
    from tampkit.methods.amia_wanda import AmiaWanda

    masks = {}
    for key, method in (("wanda", make_method("wanda")), ("amia", AmiaWanda(AmiaParams(stop=-1.0)))):
        bundle = load_model(tiny_alias)
        masks[key] = prune_blocks(bundle, _encoded(bundle, 4), method, uniform_counts(bundle, 0.5), Structure(), CPU,
                                  progress=False).masks
    assert all(torch.equal(masks["wanda"][n], masks["amia"][n]) for n in masks["wanda"])


def test_amia_sparsegpt_selecting_every_token_is_sparsegpt_bit_for_bit(tiny_alias: str) -> None:
    # With every token selected the Hessian sums the same rows in the same order as SparseGPT's, so
    # the masks and the reconstructed weights must be identical, not merely close.
    from tampkit.core.amia import AmiaParams
    from tampkit.methods.amia_sparsegpt import AmiaSparseGPT

    masks, weights = {}, {}
    for key, method in (("sparsegpt", make_method("sparsegpt")), ("amia", AmiaSparseGPT(AmiaParams(stop=-1.0)))):
        bundle = load_model(tiny_alias)
        masks[key] = prune_blocks(bundle, _encoded(bundle, 4), method, uniform_counts(bundle, 0.5), Structure(), CPU,
                                  progress=False).masks
        weights[key] = {n: l.weight.detach().clone() for n, l in decoder_linears(bundle).items()}
    assert all(torch.equal(masks["sparsegpt"][n], masks["amia"][n]) for n in masks["sparsegpt"])
    assert all(torch.equal(weights["sparsegpt"][n], weights["amia"][n]) for n in weights["sparsegpt"])


def test_amia_sparsegpt_hessian_sums_only_the_selected_rows() -> None:
    # The default stop selects a subset of these tokens; the Hessian must be exactly the selected
    # rows' X^T X (and the selection must be a strict subset, or this test would prove nothing).
    from tampkit.core.types import SampleContext
    from tampkit.methods.amia_sparsegpt import AmiaSparseGPT

    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 6, bias=False)
    x = torch.randn(40, 8)
    labels = torch.zeros(40, dtype=torch.int8)
    labels[:30] = 1  # image tokens
    method = AmiaSparseGPT(example_sample=0)
    ctx = SampleContext(0, labels)
    method.observe("q", linear, x, linear(x).detach(), ctx)
    method.end_sample(ctx, torch.softmax(torch.randn(40), 0))
    chosen = sorted(method.example["q"])
    assert 0 < len(chosen) < 40
    selected = x[chosen]
    assert torch.equal(method.xtx["q"], selected.T @ selected)
    assert method.samples["q"] == 1
