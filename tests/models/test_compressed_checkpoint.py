"""`prune.save_format: compressed`: the pruned decoder Linears saved as compressed-tensors' sparse
bitmasks (tampkit/models/compressed.py) load back to the weights of the dense save of the same
masks, bit for bit, on every tiny alias and on SmolLM2-135M (50% and 2:4), through load_model and
a transformers Auto class; the folder is smaller; a bad value is a one-line UsageError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as tf

from tampkit.core.errors import UsageError
from tampkit.methods.base import apply_mask
from tampkit.models import compressed as C
from tampkit.models.adapters import find_linears
from tampkit.models.loading import load_model
from tampkit.models.tiny import TINY_BUILDERS
from tampkit.pipeline.params import params_from_flat
from tampkit.pipeline.prune_command import prune_to_folder
from tampkit.pipeline.stages.prune import checkpoint_bytes
from tampkit.reporting.report import count_saved_zeros, saved_weight_keys
from tampkit.store.artifacts import MASKS_FILE


#: The six ways to keep two of four.
_TWO_OF_FOUR = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)


def _prune(model: torch.nn.Module, adapter, sparsity: float | None, seed: int = 0) -> list[str]:
    """Seeded random masks on the decoder Linears (`None`: 2:4 along the inputs), applied as the
    methods apply theirs (`apply_mask`); their module names. Which weights go does not matter here,
    only that the saved zeros are a method's zeros, so random masks keep SmolLM2's test fast."""
    generator = torch.Generator().manual_seed(seed)
    prefix, layers = adapter.decoder_layers(model)
    names = []
    for i, block in enumerate(layers):
        for name, linear in find_linears(block).items():
            shape = linear.weight.shape
            if sparsity is None:
                pick = torch.randint(0, len(_TWO_OF_FOUR), (shape.numel() // 4,), generator=generator)
                mask = ~_TWO_OF_FOUR[pick].view(shape)
            else:
                mask = torch.rand(shape, generator=generator) < sparsity
            apply_mask(linear, mask)
            names.append(f"{prefix}.{i}.{name}")
    return names


def _save_both(bundle, names: list[str], root: Path, structure: str) -> tuple[Path, Path]:
    """The pruned model saved dense, and the same folder compressed (as the prune stage does)."""
    dense, packed = root / "dense", root / "compressed"
    bundle.model.save_pretrained(dense)
    bundle.processor.save_pretrained(dense)
    shutil.copytree(dense, packed)
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    C.compress_folder(packed, saved_weight_keys(packed, names, prefix).values(), structure)
    return dense, packed


def _assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():  # bit for bit: the raw bytes, so -0.0 and NaN payloads count too
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape, key
        assert torch.equal(ours[key].contiguous().view(torch.uint8), tensor.contiguous().view(torch.uint8)), key


# --- the tensor format -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_weight_round_trips_bit_for_bit_in_both_formats(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 16).to(dtype)
    w[w.abs() < 0.7] = 0
    w[0, 0], w[1, 1] = -0.0, float("nan")  # a stored -0.0 stays -0.0
    parts = C.compress_weight(w, C.BITMASK)
    assert set(parts) == set(C.PARTS[C.BITMASK])
    assert parts["compressed"].dtype == dtype and parts["compressed"].numel() == int(C.kept(w).sum())
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].shape == (12, 2)
    back = C.decompress_weight(parts)
    assert torch.equal(back.view(torch.uint8), w.view(torch.uint8))

    two_four = torch.randn(6, 16).to(dtype)
    groups = two_four.view(-1, 4)
    groups[:, 1:3] = 0
    groups[0, 0] = 0  # a group that lost three: padded with a stored zero
    parts = C.compress_weight(two_four, C.SPARSE24)
    assert parts["compressed"].shape == (6, 8) and parts["shape"].tolist() == [[6], [16]]
    assert torch.equal(C.decompress_weight(parts).view(torch.uint8), two_four.view(torch.uint8))


def test_the_bitmask_is_compressed_tensors_layout() -> None:
    """Bit j of row i is weight (i, j), little-endian in each byte, rows padded to whole bytes;
    row_offsets index each row's first value (compressed-tensors' BitmaskTensor)."""
    w = torch.tensor([[1.0, 0, 0, 2, 0, 0, 0, 0, 3], [0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0, 0, 0, 0]])
    parts = C.compress_weight(w, C.BITMASK)
    assert parts["bitmask"].tolist() == [[0b1001, 0b1], [0, 0], [0b10, 0]]
    assert parts["compressed"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert parts["row_offsets"].tolist() == [0, 3, 3] and parts["shape"].tolist() == [3, 9]


def test_a_weight_that_is_not_two_four_is_refused_by_the_two_four_format() -> None:
    w = torch.ones(2, 8)
    assert not C.is_two_four(w)
    with pytest.raises(ValueError, match="not 2:4"):
        C.compress_weight(w, C.SPARSE24)


# --- folders: every tiny alias, smollm2 -----------------------------------------------------------


@pytest.mark.parametrize("alias", sorted(TINY_BUILDERS))
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_every_tiny_alias_loads_back_bit_identical_to_its_dense_save(alias: str, structure: str, tmp_path: Path) -> None:
    bundle = TINY_BUILDERS[alias]()
    names = _prune(bundle.model, bundle.adapter, None if structure == "2:4" else 0.5)
    dense, packed = _save_both(bundle, names, tmp_path, structure)
    config = C.sparsity_config(packed)
    assert config["format"] == (C.SPARSE24 if structure == "2:4" else C.BITMASK)
    assert len(config["targets"]) == len(names)
    assert checkpoint_bytes(packed) < checkpoint_bytes(dense)
    ours, theirs = load_model(str(packed)), load_model(str(dense))
    assert getattr(ours.model.config, "quantization_config", None) is None  # loaded dense: no compression left
    _assert_same_weights(ours.model.state_dict(), theirs.model.state_dict())
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    assert count_saved_zeros(packed, names, prefix) == count_saved_zeros(dense, names, prefix)


def test_only_the_pruned_decoder_linears_are_compressed(tmp_path: Path) -> None:
    """Embeddings, the vision tower, the projector and lm_head stay as saved; config.json holds a
    compressed-tensors quantization_config whose sparsity_config the library itself parses."""
    from compressed_tensors.config import BitmaskConfig, SparsityCompressionConfig
    from safetensors import safe_open

    bundle = TINY_BUILDERS["tiny-llava-next"]()
    names = _prune(bundle.model, bundle.adapter, 0.5)
    dense, packed = _save_both(bundle, names, tmp_path, "unstructured")
    quant = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == C.BITMASK
    parsed = SparsityCompressionConfig.load_from_registry(quant["sparsity_config"]["format"], **quant["sparsity_config"])
    assert isinstance(parsed, BitmaskConfig) and parsed.sparsity_structure == "unstructured"
    assert abs(parsed.global_sparsity - 0.5) < 0.01
    with safe_open(str(packed / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    with safe_open(str(dense / "model.safetensors"), "pt") as f:
        dense_keys = set(f.keys())
    compressed_modules = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".bitmask")}
    assert compressed_modules == set(parsed.targets) and len(compressed_modules) == len(names)
    assert all("vision" not in m and "projector" not in m and "lm_head" not in m for m in compressed_modules)
    untouched = {k for k in dense_keys if k.rsplit(".", 1)[0] not in compressed_modules}
    assert untouched <= keys and any("vision_tower" in k for k in untouched) and any("lm_head" in k for k in untouched)


@pytest.mark.slow
def test_smollm2_at_50_percent_and_two_four_loads_back_bit_identical(tmp_path: Path) -> None:
    """The real model's shapes and dtype (fp32: the GGUF de-quantised), one load for both masks."""
    bundle = load_model("smollm2-135m")
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    original = {k: v.clone() for k, v in layers.state_dict().items()}
    for structure, fmt in (("unstructured", C.BITMASK), ("2:4", C.SPARSE24)):
        layers.load_state_dict(original)
        names = _prune(bundle.model, bundle.adapter, None if structure == "2:4" else 0.5)
        dense, packed = _save_both(bundle, names, tmp_path / fmt, structure)
        assert C.sparsity_config(packed)["format"] == fmt
        assert checkpoint_bytes(packed) < 0.8 * checkpoint_bytes(dense)
        theirs = tf.AutoModelForCausalLM.from_pretrained(str(dense))
        _assert_same_weights(load_model(str(packed)).model.state_dict(), theirs.state_dict())
        shutil.rmtree(tmp_path / fmt)


# --- transformers, the pipeline, errors -----------------------------------------------------------


@pytest.mark.parametrize("alias,auto", [("tiny-llama", tf.AutoModelForCausalLM),
                                        ("tiny-llava-next", tf.AutoModelForImageTextToText)])
def test_a_transformers_auto_class_loads_it_through_the_decompressed_state_dict(alias: str, auto, tmp_path: Path) -> None:
    bundle = TINY_BUILDERS[alias]()
    names = _prune(bundle.model, bundle.adapter, 0.5)
    dense, packed = _save_both(bundle, names, tmp_path, "unstructured")
    ours = C.load_pretrained(auto, packed)
    theirs = auto.from_pretrained(str(dense))
    assert type(ours) is type(theirs)
    _assert_same_weights(ours.state_dict(), theirs.state_dict())
    C.decompress_folder(packed, tmp_path / "decompressed")  # a dense copy any loader (vLLM) reads
    assert C.sparsity_config(tmp_path / "decompressed") is None
    _assert_same_weights(auto.from_pretrained(str(tmp_path / "decompressed")).state_dict(), theirs.state_dict())


def test_a_bare_from_pretrained_does_not_restore_the_weights_today(tmp_path: Path) -> None:
    """Pins the upstream state docs/deployment.md describes: transformers 5.23 + compressed-tensors
    0.20 ignore `sparsity_config`, so a bare from_pretrained initialises the compressed Linears
    afresh (load through `load_pretrained` instead). When this fails, bare loading works: update
    loading.py and the docs."""
    bundle = TINY_BUILDERS["tiny-llama"]()
    names = _prune(bundle.model, bundle.adapter, 0.5)
    dense, packed = _save_both(bundle, names, tmp_path, "unstructured")
    bare = tf.AutoModelForCausalLM.from_pretrained(str(packed)).state_dict()
    truth = tf.AutoModelForCausalLM.from_pretrained(str(dense)).state_dict()
    differs = [name for name in names if not torch.equal(bare[f"{name}.weight"], truth[f"{name}.weight"])]
    assert differs == list(names), "bare from_pretrained now restores the compressed weights: update loading.py and the docs"


def test_the_prune_command_saves_compressed_and_reports_the_same_sparsity(tmp_path: Path) -> None:
    """`tamp prune --save-format compressed` (the prune stage): 2:4 wanda on tiny-llava-next, against
    the dense save of the same run (the masks are reused: save_format is not a masks knob)."""
    flat = {"model.name": "tiny-llava-next", "prune.method": "wanda", "prune.structure": "2:4",
            "calibration.source": "builtin-images", "calibration.nsamples": 2, "report.plots": False}
    work = tmp_path / "work"
    dense = prune_to_folder(params_from_flat(flat), tmp_path / "dense", workdir=work, progress=False)
    packed = prune_to_folder(params_from_flat({**flat, "prune.save_format": "compressed"}), tmp_path / "packed",
                             workdir=work, progress=False)
    assert dense["save_format"] == "dense" and "compression" not in dense
    assert packed["save_format"] == "compressed" and packed["compression"]["format"] == C.SPARSE24
    assert packed["compression"]["compressed_bytes"] < packed["compression"]["dense_bytes"]
    assert packed["compression"]["dense_bytes"] == checkpoint_bytes(tmp_path / "dense")
    assert packed["matrices"] == dense["matrices"] and packed["achieved_sparsity"] == dense["achieved_sparsity"] == 0.5
    assert (tmp_path / "packed" / MASKS_FILE).exists()
    _assert_same_weights(load_model(str(tmp_path / "packed")).model.state_dict(),
                         load_model(str(tmp_path / "dense")).model.state_dict())


def test_a_bad_save_format_is_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError) as err:
        params_from_flat({"prune.save_format": "zip"})
    assert str(err.value) == "params: prune.save_format: unknown value 'zip' (allowed: dense, compressed)"
    with pytest.raises(UsageError) as err:
        params_from_flat({"prune.save_format": "sparse"}, label=lambda key: "--save-format")
    assert str(err.value).startswith("--save-format: unknown value 'sparse'") and "\n" not in str(err.value)


def test_disk_offload_of_a_compressed_folder_is_a_usage_error(tmp_path: Path) -> None:
    bundle = TINY_BUILDERS["tiny-llama"]()
    names = _prune(bundle.model, bundle.adapter, 0.5)
    _, packed = _save_both(bundle, names, tmp_path, "unstructured")
    with pytest.raises(UsageError, match="--offload: .* compressed sparse checkpoint"):
        load_model(str(packed), offload="disk")


def test_a_sharded_checkpoint_keeps_its_index_and_shards(tmp_path: Path) -> None:
    """Shards (and their index) are rewritten one by one, each compressed weight beside its old shard."""
    bundle = TINY_BUILDERS["tiny-llava-next"]()
    names = _prune(bundle.model, bundle.adapter, 0.7)
    dense, packed = tmp_path / "dense", tmp_path / "packed"
    bundle.model.save_pretrained(dense, max_shard_size="150KB")
    bundle.processor.save_pretrained(dense)
    shutil.copytree(dense, packed)
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    C.compress_folder(packed, saved_weight_keys(packed, names, prefix).values())
    index = json.loads((packed / C.INDEX_FILE).read_text())
    shards = sorted(p.name for p in packed.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert sum(k.endswith(".bitmask") for k in index["weight_map"]) == len(names)
    assert not any(p.name.startswith(".") for p in packed.iterdir())  # no temporary file left behind
    _assert_same_weights(load_model(str(packed)).model.state_dict(), load_model(str(dense)).model.state_dict())


def test_the_offloaded_prune_stage_saves_compressed_as_the_in_memory_one(tmp_path: Path) -> None:
    """model.offload: disk writes its checkpoint shard by block; compressed afterwards, the same weights
    and report as the in-memory path."""
    bundle = TINY_BUILDERS["tiny-llava-next"]()
    bundle.model.save_pretrained(tmp_path / "model")
    bundle.processor.save_pretrained(tmp_path / "model")
    flat = {"model.name": str(tmp_path / "model"), "prune.method": "wanda", "prune.save_format": "compressed",
            "calibration.source": "builtin-images", "calibration.nsamples": 2, "report.plots": False}
    memory = prune_to_folder(params_from_flat(flat), tmp_path / "memory", progress=False)
    disk = prune_to_folder(params_from_flat({**flat, "model.offload": "disk"}), tmp_path / "disk", progress=False)
    assert disk["compression"]["format"] == memory["compression"]["format"] == C.BITMASK
    assert disk["matrices"] == memory["matrices"]
    assert (tmp_path / "disk" / C.INDEX_FILE).exists()
    _assert_same_weights(load_model(str(tmp_path / "disk")).model.state_dict(),
                         load_model(str(tmp_path / "memory")).model.state_dict())


def test_the_lmms_eval_model_and_the_perplexity_read_a_compressed_folder(tmp_path: Path) -> None:
    """What `tamp ppl`, the evaluate stage and lmms-eval's `tampkit` model load: the same weights."""
    pytest.importorskip("lmms_eval")
    from tampkit.lmms.model import TampkitLMM

    bundle = TINY_BUILDERS["tiny-llava-next"]()
    names = _prune(bundle.model, bundle.adapter, 0.5)
    dense, packed = _save_both(bundle, names, tmp_path, "unstructured")
    lmm = TampkitLMM(pretrained=str(packed), device="cpu")
    _assert_same_weights(lmm.bundle.model.state_dict(), load_model(str(dense)).model.state_dict())
