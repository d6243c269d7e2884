"""Per-block files: a file is reused only for its own fingerprint, block and intact tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tampkit.store.block_store import BlockStore, tensor_checksum

FP = "a" * 64


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"q_proj": torch.randn(3, 4, generator=generator), "mask": torch.rand(2, 5, generator=generator) > 0.5}


def test_a_saved_block_loads_back_bit_for_bit_with_its_record(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, FP, "masks")
    store.save(1, _tensors(), {"kept": [1, 2]})
    again = BlockStore(tmp_path, FP, "masks")
    tensors, record = again.load(1)
    assert record == {"kept": [1, 2]} and again.loaded == [1] and store.computed == [1]
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temp name, then renamed


@pytest.mark.parametrize("reader", ["other fingerprint", "other block"])
def test_a_file_of_another_configuration_or_block_is_not_reused(tmp_path: Path, reader: str, caplog) -> None:
    BlockStore(tmp_path, FP, "stats").save(0, _tensors(), {})
    if reader == "other fingerprint":
        assert BlockStore(tmp_path, "b" * 64, "stats").load(0) is None
        assert any("another configuration" in r.getMessage() for r in caplog.records)
    else:
        BlockStore(tmp_path, FP, "stats").path(0).rename(BlockStore(tmp_path, FP, "stats").path(2))
        assert BlockStore(tmp_path, FP, "stats").load(2) is None


def test_a_flipped_bit_is_a_checksum_mismatch_and_a_truncation_unreadable(tmp_path: Path, caplog) -> None:
    store = BlockStore(tmp_path, FP, "stats")
    store.save(0, _tensors(0), {})
    store.save(1, _tensors(1), {})
    data = bytearray(store.path(0).read_bytes())
    data[-1] ^= 0x01
    store.path(0).write_bytes(bytes(data))
    store.path(1).write_bytes(store.path(1).read_bytes()[:50])
    assert store.load(0) is None and store.load(1) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("checksum mismatch in block_000" in m for m in messages)
    assert any("unreadable block_001" in m for m in messages)


def test_remove_beyond_drops_the_blocks_of_a_deeper_model(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, FP, "masks")
    for index in range(4):
        store.save(index, _tensors(index), {})
    store.remove_beyond(2)
    assert sorted(p.name for p in tmp_path.glob("block_*")) == ["block_000.safetensors", "block_001.safetensors"]


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=16), st.integers(0, 15))
def test_the_checksum_sees_every_value_and_the_shape(values: list[float], position: int) -> None:
    tensor = torch.tensor(values, dtype=torch.float32)
    changed = tensor.clone()
    changed[position % len(values)] = torch.nextafter(changed[position % len(values)], torch.tensor(float("inf")))
    assert tensor_checksum({"w": tensor}) != tensor_checksum({"w": changed})
    assert tensor_checksum({"w": tensor}) != tensor_checksum({"w": tensor.reshape(1, -1)})
