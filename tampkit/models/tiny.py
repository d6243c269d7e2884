"""Tiny models of the real transformers classes, random weights from a fixed seed.

They exist so that every adapter, method and pipeline stage runs end to end offline in seconds.
Shapes keep the real structure (GQA, SwiGLU MLP, CLIP tower + projector, anyres tiles, mRoPE), only
small. Weights are seeded, so the same alias always gives the same model on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf

from tampkit.models.adapters import ModelBundle, adapter_for
from tampkit.models.qwen2vl_inputs import Qwen2VLImageTextProcessor
from tampkit.models.tokenizer import byte_tokenizer

SEED = 1234
TINY_IMAGE = 32  # px per tile side
TINY_PATCH = 8
TINY_MEL_BINS = 32


def _text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    return config


def _clip_config(image_size: int = TINY_IMAGE, patch_size: int = TINY_PATCH) -> dict[str, Any]:
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


def seeded(build: Callable[[], torch.nn.Module], seed: int = SEED) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def _bundle(name: str, model: torch.nn.Module, processor: Any) -> ModelBundle:
    return ModelBundle(model=model, processor=processor, adapter=adapter_for(model), name=name, max_length=1024)


def tiny_llama() -> ModelBundle:
    """Text-only Llama-style causal LM."""
    tokenizer = byte_tokenizer()
    config = tf.LlamaConfig(**{k: v for k, v in _text_config(len(tokenizer)).items() if k != "model_type"})
    model = seeded(lambda: tf.LlamaForCausalLM(config))
    return _bundle("tiny-llama", model, tokenizer)


def tiny_llava() -> ModelBundle:
    """LLaVA-1.5 structure: one 32 px CLIP tile, 16 image tokens (CLS dropped)."""
    tokenizer = byte_tokenizer(("<image>",))
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = tf.LlavaConfig(
        text_config=_text_config(len(tokenizer)),
        vision_config=_clip_config(),
        image_token_index=image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = seeded(lambda: tf.LlavaForConditionalGeneration(config))
    image_processor = tf.CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return _bundle("tiny-llava", model, processor)


def llava_next_processor(tokenizer: Any, image_size: int, patch_size: int, pinpoints: list[list[int]]) -> Any:
    """A LLaVA-NeXT processor whose token count agrees with a model of this tile geometry."""
    image_processor = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    return tf.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def tiny_llava_next() -> ModelBundle:
    """LLaVA-NeXT structure: anyres over 32 px tiles (1x1, 1x2, 2x1), row-newline tokens."""
    tokenizer = byte_tokenizer(("<image>",))
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    pinpoints = [[TINY_IMAGE, TINY_IMAGE], [TINY_IMAGE, 2 * TINY_IMAGE], [2 * TINY_IMAGE, TINY_IMAGE]]
    config = tf.LlavaNextConfig(
        text_config=_text_config(len(tokenizer)),
        vision_config=_clip_config(),
        image_token_index=image_token,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = seeded(lambda: tf.LlavaNextForConditionalGeneration(config))
    processor = llava_next_processor(tokenizer, TINY_IMAGE, TINY_PATCH, pinpoints)
    return _bundle("tiny-llava-next", model, processor)


def tiny_qwen2_vl() -> ModelBundle:
    """Qwen2-VL structure: 14 px patches merged 2x2, multimodal RoPE over (t, h, w)."""
    specials = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tokenizer = byte_tokenizer(specials)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    text = _text_config(len(tokenizer), model_type="qwen2_vl_text", bos_token_id=None, eos_token_id=None)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = tf.Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = seeded(lambda: tf.Qwen2VLForConditionalGeneration(config))
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLImageTextProcessor(image_processor, tokenizer)
    return _bundle("tiny-qwen2-vl", model, processor)


def tiny_qwen25_omni() -> ModelBundle:
    """Qwen2.5-Omni thinker structure: Qwen2.5-VL-style windowed ViT (14 px patches merged 2x2,
    2-frame temporal patches), Whisper-style audio tower over 32 mel bins, mRoPE decoder."""
    from tampkit.models.omni_inputs import SPECIAL_TOKENS, OmniInputsProcessor

    tokenizer = byte_tokenizer(SPECIAL_TOKENS)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS}
    text = _text_config(len(tokenizer), bos_token_id=None, eos_token_id=None)
    text.pop("model_type")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = tf.Qwen2_5OmniThinkerConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        audio_config=dict(num_mel_bins=TINY_MEL_BINS, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=64, n_window=50, max_source_positions=1500),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
    )
    model = seeded(lambda: tf.Qwen2_5OmniThinkerForConditionalGeneration(config))
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    features = tf.WhisperFeatureExtractor(feature_size=TINY_MEL_BINS, sampling_rate=16000)
    return _bundle("tiny-qwen2.5-omni", model, OmniInputsProcessor(image_processor, features, tokenizer))


TINY_BUILDERS: dict[str, Callable[[], ModelBundle]] = {
    "tiny-llama": tiny_llama,
    "tiny-llava": tiny_llava,
    "tiny-llava-next": tiny_llava_next,
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-omni": tiny_qwen25_omni,
}
