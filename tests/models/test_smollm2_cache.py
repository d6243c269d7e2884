"""SmolLM2's de-quantised weights are cached once per machine, keyed by the GGUF's SHA-256: what
the cache gives back is what de-quantising the GGUF gives, bit for bit, and a damaged cache is
replaced, never trusted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tampkit.models import smollm2


@pytest.fixture()
def cache_home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def _load():
    return smollm2._load_state.__wrapped__()  # past the per-process lru_cache


def test_the_cache_gives_back_exactly_the_gguf(cache_home: Path, monkeypatch) -> None:
    fresh_state, fresh_config, fresh_tokenizer = _load()  # de-quantises and writes the cache
    folder = smollm2.cache_folder(smollm2.gguf_path())
    assert folder.parent.parent == cache_home / "tampkit" and (folder / "model.safetensors").exists()

    def no_gguf(path):
        raise AssertionError("de-quantised again although the cache was there")

    monkeypatch.setattr(smollm2, "_from_gguf", no_gguf)
    state, config, tokenizer = _load()
    assert state.keys() == fresh_state.keys()
    assert all(torch.equal(state[k], fresh_state[k]) and state[k].dtype == fresh_state[k].dtype for k in state)
    assert {k: v for k, v in config.items() if k != "transformers_version"} == \
        {k: v for k, v in fresh_config.items() if k != "transformers_version"}
    text = "Hello, world! The cat sat on the mat.\n<|im_start|>user\nWhat is 2+2?<|im_end|>"
    assert tokenizer(text).input_ids == fresh_tokenizer(text).input_ids
    messages = [{"role": "user", "content": "Describe this."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == fresh_tokenizer.apply_chat_template(messages, tokenize=False)


def test_a_damaged_cache_is_replaced(cache_home: Path) -> None:
    folder = smollm2.cache_folder(smollm2.gguf_path())
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    state, _, _ = _load()
    assert "model.embed_tokens.weight" in state
    assert (folder / "model.safetensors").stat().st_size > 1_000_000  # rewritten whole
