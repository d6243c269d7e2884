"""Adapters: what differs between model families, and nothing else.

An adapter answers three questions about a loaded model: where its language decoder's blocks are,
which token positions hold image / video / audio features, and how a conversation (with an optional
image) becomes model inputs. Everything else (running blocks, statistics, masks) is family-blind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tampkit.core.errors import UsageError
from tampkit.core.types import AUDIO, IMAGE, TEXT, VIDEO, Sample

#: Token-id attribute names per modality, in the order transformers' configs spell them.
_TOKEN_ID_FIELDS: dict[int, tuple[str, ...]] = {
    IMAGE: ("image_token_id", "image_token_index"),
    VIDEO: ("video_token_id", "video_token_index"),
    AUDIO: ("audio_token_id", "audio_token_index"),
}

#: Module path fragments of the vision / audio towers and projectors (never the language decoder).
NON_DECODER_HINTS: tuple[str, ...] = ("vision", "visual", "audio", "image_encoder", "mm_projector")

#: Where a conversation turn puts each medium (LLaVA / VideoLLaMA2 convention).
MEDIA_MARKERS: tuple[str, ...] = ("<image>", "<video>", "<audio>")

#: Minimal ChatML template used where a tokenizer has none (our tiny in-process tokenizers too).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class ModelBundle:
    """A loaded model with everything needed to feed it: processor/tokenizer and adapter."""

    model: nn.Module
    processor: Any
    adapter: "Adapter"
    name: str
    max_length: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where the weights live while the runner works (`block_on` / `rest_on` context managers);
    #: None is in memory (tampkit.engine.runner.InMemory). Disk offload sets its own.
    residency: Any = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Find the language decoder's block list: the longest ModuleList of attention blocks.

    Vision/audio encoders also hold ModuleLists of blocks; their paths name them, so they are
    skipped. Returns the dotted path too, so callers can move everything *but* the blocks.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(hint in name.lower() for hint in NON_DECODER_HINTS):
            continue
        first = module[0]
        has_attention = any("attn" in n or "attention" in n for n, _ in first.named_children())
        has_linear = any(isinstance(m, nn.Linear) for m in first.modules())
        if has_attention and has_linear and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise UsageError("--model", f"found no decoder blocks in {type(model).__name__}")
    return best


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear in a block, by its dotted name inside the block (q/k/v/o/gate/up/down)."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


class Adapter:
    """Text-only causal LM (Llama / Qwen / SmolLM2 style); the base for the multimodal families."""

    family = "causal-lm"
    #: Class-name suffixes (or exact names) this adapter serves.
    class_names: tuple[str, ...] = ()
    class_suffixes: tuple[str, ...] = ("ForCausalLM",)
    has_vision = False
    #: --calibration when none is given: a set that holds every modality the family reads.
    default_calibration = "builtin"

    def matches(self, class_name: str) -> bool:
        return class_name in self.class_names or any(class_name.endswith(s) for s in self.class_suffixes)

    # -- plug-ins: a --model value the adapter loads itself (see tampkit/models/plugins.py) --------
    #: Fixed --model values `claims` accepts, for the alias lists of help texts and errors.
    aliases: tuple[str, ...] = ()

    def claims(self, spec: str) -> bool:
        """True for --model values this adapter loads with `load` (built-ins load through transformers)."""
        return False

    def load(self, spec: str, dtype: str = "auto") -> ModelBundle:
        raise NotImplementedError(f"{type(self).__name__} loads no --model values itself")

    def identity(self, spec: str) -> str:
        """What names the weights a claimed --model value loads (for fingerprints)."""
        return f"plugin:{self.family}:{spec}"

    def decoder_layers(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        return find_decoder_layers(model)

    def output_head(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The final norm after the last decoder block and the LM head (hidden states -> logits):
        a loss computed from a block's captured input runs the remaining blocks, then these."""
        prefix, _ = self.decoder_layers(model)
        parent = model.get_submodule(prefix.rpartition(".")[0])
        head = model.get_output_embeddings()
        if not isinstance(getattr(parent, "norm", None), nn.Module) or head is None:
            raise NotImplementedError(f"{type(model).__name__}: no final norm beside {prefix} or no output "
                                      "embeddings (override Adapter.output_head)")
        return parent.norm, head

    def text_config(self, model: nn.Module) -> Any:
        config = model.config
        return getattr(config, "text_config", None) or config

    def modality_token_ids(self, model: nn.Module) -> dict[int, int]:
        """Special token id of each non-text modality the config names."""
        ids: dict[int, int] = {}
        for modality, names in _TOKEN_ID_FIELDS.items():
            for attr in names:
                value = getattr(model.config, attr, None)
                if isinstance(value, int):
                    ids[modality] = value
                    break
        return ids

    def modality_labels(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """A modality code per token (see MODALITIES) from the special token ids."""
        labels = torch.full(input_ids.shape[-1:], TEXT, dtype=torch.int8)
        flat = input_ids.reshape(-1)
        for modality, token_id in self.modality_token_ids(model).items():
            labels[flat == token_id] = modality
        return labels

    # -- inputs ---------------------------------------------------------------------------------
    def image_placeholder(self, processor: Any) -> str:
        return ""

    def placeholders(self, bundle: ModelBundle, sample: Sample, use_image: bool) -> dict[str, str]:
        """Sample marker -> the family's text for that medium, for each medium this sample carries
        and the family reads; the order is the one unmarked media take at the start."""
        return {"<image>": self.image_placeholder(bundle.processor)} if use_image else {}

    def render(self, bundle: ModelBundle, sample: Sample, use_image: bool, generation_prompt: bool = False) -> str:
        """The conversation as one prompt string, each medium's marker replaced by the family's text
        (the first marker of a kind; other markers, and those of media not given, are dropped);
        with `generation_prompt`, ending where the assistant's answer starts (for evaluation)."""
        fills = self.placeholders(bundle, sample, use_image)
        messages = []
        seen: set[str] = set()
        for role, text in sample.turns:
            for marker in MEDIA_MARKERS:
                if marker in text:
                    head, _, tail = text.partition(marker)
                    text = head + (fills.get(marker, "") if marker not in seen else "") + tail.replace(marker, "")
                    seen.add(marker)
            messages.append({"role": "user" if role in ("user", "human") else "assistant", "content": text.strip()})
        missing = "".join(fill for marker, fill in fills.items() if marker not in seen)
        if missing and messages:
            messages[0]["content"] = missing + "\n" + messages[0]["content"]
        tokenizer = bundle.tokenizer
        template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    def encode(self, bundle: ModelBundle, sample: Sample, generation_prompt: bool = False) -> dict[str, torch.Tensor]:
        """Model inputs for one sample (batch of 1, no padding), truncated to max_length."""
        use_image = self.has_vision and sample.image is not None
        text = self.render(bundle, sample, use_image, generation_prompt)
        if use_image:
            inputs = dict(bundle.processor(text=[text], images=[sample.image.convert("RGB")], return_tensors="pt"))
        else:
            inputs = dict(bundle.tokenizer(text, return_tensors="pt", add_special_tokens=False))
        return self._truncate(bundle, inputs)

    def _truncate(self, bundle: ModelBundle, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cut text after max_length tokens; never cut through image features (they must match)."""
        ids = inputs["input_ids"]
        if ids.shape[1] <= bundle.max_length:
            return inputs
        labels = self.modality_labels(bundle.model, ids)
        media = (labels != TEXT).nonzero()
        keep = bundle.max_length
        if len(media) and int(media[-1]) >= keep:
            keep = int(media[-1]) + 1  # keep the whole image; only text is cut
        out = dict(inputs)
        for key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            if key in out and out[key].dim() == 2 and out[key].shape[1] == ids.shape[1]:
                out[key] = out[key][:, :keep]
        return out


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower + projector + causal LM."""

    family = "llava"
    class_names = ("LlavaForConditionalGeneration",)
    class_suffixes = ()
    has_vision = True

    def image_placeholder(self, processor: Any) -> str:
        return getattr(processor, "image_token", "<image>")


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (`LlavaNextForConditionalGeneration`): anyres tiles; the row-newline tokens
    share the image token id, so they are labelled image as the spec requires."""

    family = "llava-next"
    class_names = ("LlavaNextForConditionalGeneration",)


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL (`Qwen2VLForConditionalGeneration`): native-resolution ViT, multimodal RoPE."""

    family = "qwen2-vl"
    class_names = ("Qwen2VLForConditionalGeneration",)
    class_suffixes = ()
    has_vision = True

    def image_placeholder(self, processor: Any) -> str:
        return "<|vision_start|>" + getattr(processor, "image_token", "<|image_pad|>") + "<|vision_end|>"


class Qwen25OmniThinkerAdapter(Adapter):
    """Qwen2.5-Omni's thinker (`Qwen2_5OmniThinkerForConditionalGeneration`): video, audio, image
    and text into one Qwen2 decoder with multimodal RoPE. Token labels come from the config's
    `video_token_id` / `audio_token_id` / `image_token_id` (the `<|VIDEO|>` / `<|AUDIO|>` /
    `<|IMAGE|>` pads); the begin/end markers around each medium are text, as the spec says
    ("text: everything else"). Inputs are built by `OmniInputsProcessor` (no torchvision)."""

    family = "qwen2.5-omni"
    class_names = ("Qwen2_5OmniThinkerForConditionalGeneration",)
    class_suffixes = ()
    has_vision = True
    default_calibration = "builtin-av"
    #: Sample marker -> (processor pad token, begin marker, end marker)
    _MARKERS = {"<image>": ("<|IMAGE|>", "<|vision_bos|>", "<|vision_eos|>"),
                "<video>": ("<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"),
                "<audio>": ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")}

    def placeholders(self, bundle: ModelBundle, sample: Sample, use_image: bool) -> dict[str, str]:
        fills = {}
        for marker, value in (("<video>", sample.video), ("<audio>", sample.audio), ("<image>", sample.image)):
            if value is not None:
                pad, begin, end = self._MARKERS[marker]
                fills[marker] = begin + pad + end
        return fills

    def encode(self, bundle: ModelBundle, sample: Sample, generation_prompt: bool = False) -> dict[str, torch.Tensor]:
        text = self.render(bundle, sample, True, generation_prompt)
        inputs = bundle.processor(
            text=[text], images=[sample.image.convert("RGB")] if sample.image is not None else None,
            videos=[sample.video] if sample.video is not None else None,
            audios=[sample.audio] if sample.audio is not None else None, fps=[sample.fps])
        return self._truncate(bundle, dict(inputs))


ADAPTERS: tuple[Adapter, ...] = (LlavaNextAdapter(), LlavaAdapter(), Qwen2VLAdapter(), Qwen25OmniThinkerAdapter(),
                                 Adapter())


def adapter_for(model: nn.Module | type) -> Adapter:
    """The adapter serving this model (or model class): installed plug-ins first, then the
    built-in families; otherwise a UsageError naming them."""
    from tampkit.models.plugins import plugin_adapters

    class_name = model.__name__ if isinstance(model, type) else type(model).__name__
    candidates = [*plugin_adapters(), *ADAPTERS]
    for adapter in candidates:
        if adapter.matches(class_name):
            return adapter
    raise UsageError("--model", f"no adapter for model class {class_name} (write a plug-in adapter: see the README)",
                     [a.family for a in candidates])
