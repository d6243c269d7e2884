"""Disk offload (`model.offload: disk`): the skeleton reads exactly what from_pretrained loads, a block
only while it runs; masks and the pruned checkpoint are bit-identical to the in-memory path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from tampkit.core.errors import UsageError
from tampkit.engine.runner import InMemory
from tampkit.models.adapters import adapter_for
from tampkit.models.loading import load_model
from tampkit.models.offload import (
    INDEX_FILE,
    DiskOffload,
    SafetensorsWriter,
    Spec,
    load_offloaded,
    offloaded,
)
from tampkit.models.tiny import TINY_BUILDERS
from tampkit.models.tokenizer import byte_tokenizer
import tampkit.pipeline.stages.context as context
from tampkit.pipeline.layout import Layout
from tampkit.pipeline.params import params_from_dict
from tampkit.pipeline.run import run_stages
from tampkit.store.artifacts import MASKS_FILE, load_masks


def _tied_llama(folder: Path) -> None:
    """A tiny causal LM whose head is tied to its embeddings (SmolLM2's layout), saved."""
    tokenizer = byte_tokenizer()
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(7)
    tf.LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-llava-next, tiny-qwen2-vl and a tied causal LM, each saved as a save_pretrained folder."""
    root = tmp_path_factory.mktemp("offload-models")
    folders = {}
    for alias in ("tiny-llava-next", "tiny-qwen2-vl"):
        bundle = TINY_BUILDERS[alias]()
        bundle.model.save_pretrained(root / alias)
        bundle.processor.save_pretrained(root / alias)
        folders[alias] = root / alias
    _tied_llama(root / "tied-llama")
    folders["tied-llama"] = root / "tied-llama"
    return folders


@pytest.mark.parametrize("name,dtype", [("tiny-llava-next", "auto"), ("tiny-qwen2-vl", "auto"),
                                        ("tied-llama", "auto"), ("tiny-llava-next", "bfloat16")])
def test_the_skeleton_reads_what_from_pretrained_loads(saved: dict[str, Path], name: str, dtype: str) -> None:
    folder = str(saved[name])
    reference = load_model(folder, dtype).model
    cls = type(reference)
    model, residency = load_offloaded(cls, folder, dtype, adapter_for(cls))
    assert offloaded(model) and model.config.to_dict() == reference.config.to_dict()
    with residency.loaded(model, "", torch.device("cpu")):
        ours, theirs = model.state_dict(), reference.state_dict()
        assert ours.keys() == theirs.keys()
        for key, tensor in theirs.items():
            assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
        if name == "tied-llama":
            assert model.lm_head.weight is model.model.embed_tokens.weight  # read once, shared
    assert all(p.device.type == "meta" for p in model.parameters())  # and put back
    buffers = dict(reference.named_buffers())
    for key, buffer in model.named_buffers():  # non-persistent buffers (rotary tables) computed, not read
        assert buffer.dtype == buffers[key].dtype and torch.equal(buffer, buffers[key]), key


def test_a_block_is_read_only_while_it_runs_and_the_capture_skips_blocks_and_head(saved: dict[str, Path]) -> None:
    bundle = load_model(str(saved["tiny-llava-next"]), offload="disk")
    residency = bundle.residency
    assert isinstance(residency, DiskOffload)
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    block_bytes = sum(p.numel() * p.element_size() for p in layers[1].parameters())
    with residency.block_on(1, layers[1], torch.device("cpu")):
        assert not offloaded(layers[1]) and offloaded(layers[0]) and offloaded(layers[2])
        assert residency.bytes_read == block_bytes
    assert offloaded(layers[1])
    norm, head = bundle.adapter.output_head(bundle.model)
    with residency.rest_on(bundle.model, prefix, torch.device("cpu")):
        assert not offloaded(bundle.model.model.vision_tower) and not offloaded(bundle.model.model.multi_modal_projector)
        assert bundle.model.model.language_model.embed_tokens.weight.device.type == "cpu"
        assert all(offloaded(m) for m in (*layers, norm, head))
    with residency.modules_on(bundle.model, (norm, head), torch.device("cpu")):
        assert not offloaded(norm) and not offloaded(head)
    assert offloaded(bundle.model)


def test_offload_needs_a_saved_folder() -> None:
    with pytest.raises(UsageError, match="--offload: .*'tiny-llava' is an alias.*save it to a folder first"):
        load_model("tiny-llava", offload="disk")
    with pytest.raises(UsageError, match="--offload: unknown value 'ram'"):
        load_model("tiny-llava", offload="ram")


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5, dtype=torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.tensor(2.5), "d": torch.zeros(0, 4), "e": torch.tensor([True, False, True])}
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [Spec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()],
                               {"format": "pt"})
    for key, tensor in tensors.items():
        writer.write(key, tensor)
    writer.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    short = SafetensorsWriter(tmp_path / "y.safetensors", [Spec("a", torch.float32, (2,))])
    with pytest.raises(ValueError, match="expected"):
        short.write("a", torch.zeros(3))
    short.abort()


#: OWL's allocation and ECoFLaP's block scores read weights outside the block runner (the residency's
#: `modules_on`, and OWL's per-block reads, come with the engine change of issue 19 item 3).
NEEDS_ENGINE = pytest.mark.skipif(not hasattr(InMemory, "modules_on"), reason="needs the residency's modules_on")
STAGES = ("calibrate", "stats", "sensitivity", "allocate", "masks", "prune")


def _pipeline(folder: Path, root: Path, method: str, offload: str, monkeypatch: pytest.MonkeyPatch,
              extra: dict | None = None, stages: tuple[str, ...] = STAGES) -> Layout:
    """calibrate .. prune over `root` with the model in memory or offloaded to disk."""
    # The stages share one loaded model per process: start each run from a fresh load. (Until the
    # context's model cache keys on model.offload, its loader is told here; then this is a no-op.)
    monkeypatch.setattr(context, "_PRISTINE", {})
    monkeypatch.setattr(context, "load_model", lambda name, dtype="auto", *_: load_model(name, dtype, offload))
    params = params_from_dict({"model": {"name": str(folder), "offload": offload},
                               "calibration": {"source": "builtin-images", "nsamples": 2},
                               "prune": {"method": method}, "report": {"plots": False}, **(extra or {})})
    layout = Layout.under(root)
    assert isinstance(context.pristine_model(params).residency, DiskOffload) == (offload == "disk")
    run_stages(params, layout, stages, progress=False)
    return layout


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(str(folder)).model.state_dict()


@pytest.mark.parametrize("name,method,allocation", [
    ("tiny-llava-next", "tamp", "method"), ("tiny-llava-next", "sparsegpt", "method"), ("tied-llama", "wanda", "method"),
    pytest.param("tiny-llava-next", "wanda", "owl", marks=NEEDS_ENGINE),
    pytest.param("tiny-qwen2-vl", "wanda", "ecoflap", marks=NEEDS_ENGINE)])
def test_masks_and_the_pruned_checkpoint_are_bit_identical_to_the_in_memory_path(
        saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, method: str,
        allocation: str) -> None:
    extra = {"prune": {"method": method, "allocation": allocation}}
    memory = _pipeline(saved[name], tmp_path / "memory", method, "none", monkeypatch, extra)
    disk = _pipeline(saved[name], tmp_path / "disk", method, "disk", monkeypatch, extra)
    blocks = sorted(p.name for p in memory.masks.glob("block_*.safetensors"))
    assert blocks and blocks == sorted(p.name for p in disk.masks.glob("block_*.safetensors"))
    for block in blocks:  # the masks stage's files: masks (and SparseGPT's weights) bit for bit
        ours, theirs = load_file(str(disk.masks / block)), load_file(str(memory.masks / block))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # the checkpoint: sharded by block, with its index, processor and masks; the same weights
    shards = sorted(p.name for p in disk.pruned.glob("model-*.safetensors"))
    index = json.loads((disk.pruned / INDEX_FILE).read_text())
    assert len(shards) == 4 and sorted(set(index["weight_map"].values())) == shards
    assert json.loads((disk.pruned / "config.json").read_text()) == json.loads((memory.pruned / "config.json").read_text())
    on_disk = {p.name for p in disk.pruned.iterdir()}
    assert {p.name for p in memory.pruned.iterdir()} - {"model.safetensors"} <= on_disk
    ours, theirs = _state(disk.pruned), _state(memory.pruned)
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    masks_disk, masks_memory = load_masks(disk.pruned / MASKS_FILE), load_masks(memory.pruned / MASKS_FILE)
    assert masks_disk.keys() == masks_memory.keys() and all(torch.equal(masks_disk[k], masks_memory[k]) for k in masks_memory)
    report_disk = json.loads((disk.reports / "tamp_report.json").read_text())
    report_memory = json.loads((memory.reports / "tamp_report.json").read_text())
    assert report_disk["matrices"] == report_memory["matrices"]
    assert report_disk["achieved_sparsity"] == report_memory["achieved_sparsity"]


@NEEDS_ENGINE
def test_the_evaluate_stage_scores_an_offloaded_run_as_the_in_memory_one(
        saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"evaluate": {"perplexity": False, "image_qa": False, "ppl_window": 32, "agreement_text_windows": 1, "limit": 1}}
    runs = [_pipeline(saved["tied-llama"], tmp_path / offload, "wanda", offload, monkeypatch, extra, (*STAGES, "reference", "evaluate"))
            for offload in ("none", "disk")]
    memory, disk = (json.loads((layout.metrics / "metrics.json").read_text()) for layout in runs)
    assert "agreement_top1" in memory and disk == memory
