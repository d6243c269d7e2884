"""Turn a --model value (built-in alias, local folder, hub id) into a ModelBundle."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from tampkit.core.errors import UsageError
from tampkit.models.adapters import ModelBundle, adapter_for
from tampkit.models.compressed import load_pretrained, sparsity_config
from tampkit.models.plugins import claiming_plugin, plugin_adapters
from tampkit.models.qwen2vl_inputs import Qwen2VLImageTextProcessor
from tampkit.models.smollm2 import smollm2_135m, smollm2_llava_next
from tampkit.models.tiny import TINY_BUILDERS

#: Models built by this package's code. Plug-ins add their own names (`Adapter.aliases`; the
#: organism is one, see tampkit/organism/adapter.py).
ALIASES: dict[str, Callable[[], ModelBundle]] = {
    **TINY_BUILDERS,
    "smollm2-135m": smollm2_135m,
    "smollm2-llava-next": smollm2_llava_next,
}


def alias_names() -> list[str]:
    """Every alias a --model value may be: the built-in ones, then those of installed plug-ins."""
    return list(ALIASES) + [alias for plugin in plugin_adapters() for alias in plugin.aliases]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or Path(spec).exists()


def _max_length(model: torch.nn.Module) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    return int(getattr(config, "max_position_embeddings", 4096) or 4096)


def _load_processor(source: str, family: str) -> Any:
    """The saved processor; for Qwen2-VL and Qwen2.5-Omni ours (theirs need torchvision); the
    tokenizer for LMs."""
    if family == "qwen2-vl":
        return Qwen2VLImageTextProcessor(tf.AutoImageProcessor.from_pretrained(source), tf.AutoTokenizer.from_pretrained(source))
    if family == "qwen2.5-omni":
        from tampkit.models.omni_inputs import OmniInputsProcessor

        return OmniInputsProcessor.from_pretrained(source)
    if family == "causal-lm":
        return tf.AutoTokenizer.from_pretrained(source)
    return tf.AutoProcessor.from_pretrained(source)


_THINKER_OF = {"Qwen2_5OmniForConditionalGeneration": "Qwen2_5OmniThinkerForConditionalGeneration",
               "Qwen2_5OmniModel": "Qwen2_5OmniThinkerForConditionalGeneration"}


def _from_pretrained(source: str, dtype: str, offload: str = "none") -> ModelBundle:
    config = tf.AutoConfig.from_pretrained(source)
    architectures = getattr(config, "architectures", None) or []
    # a full Qwen2.5-Omni checkpoint (thinker + talker + vocoder): we prune the thinker, the part that
    # reads; transformers loads it alone from the full checkpoint
    architectures = [_THINKER_OF.get(a, a) for a in architectures]
    model_cls = next((getattr(tf, a) for a in architectures if hasattr(tf, a)), None)
    if model_cls is None:
        raise UsageError("--model", f"{source}: config names no transformers class ({architectures})")
    adapter = adapter_for(model_cls)  # before loading any weights: fail fast
    residency = None
    compressed = sparsity_config(source) is not None  # a `--save-format compressed` checkpoint
    if compressed and offload == "disk":
        raise UsageError("--offload", f"{source} is a compressed sparse checkpoint; disk offload reads dense weights",
                         "--offload none, or a dense copy: tampkit.models.compressed.decompress_folder(SRC, DST)")
    if offload == "disk":  # a skeleton on the meta device; each part's weights read only while it runs
        from tampkit.models.offload import load_offloaded

        model, residency = load_offloaded(model_cls, source, dtype, adapter)
    else:
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        if compressed:  # transformers cannot decompress sparse-bitmask weights: we do (models/compressed.py)
            model = load_pretrained(model_cls, source, dtype=torch_dtype).eval()
        else:
            model = model_cls.from_pretrained(source, dtype=torch_dtype).eval()
    processor = _load_processor(source, adapter.family)
    return ModelBundle(model=model, processor=processor, adapter=adapter, name=source, max_length=_max_length(model),
                       residency=residency)


def load_model(spec: str, dtype: str = "auto", offload: str = "none") -> ModelBundle:
    """Load an alias, a local folder (`save_pretrained` layout) or a hub id.

    Aliases never touch the network. A path that does not exist is an error, not a hub lookup.
    A value an installed plug-in adapter claims (`videollama2:...`) is loaded by that plug-in.
    A folder saved with `--save-format compressed` is decompressed on load (tampkit/models/compressed.py):
    the same weights, bit for bit, as the dense save of the same masks.
    With `offload="disk"` a local folder's weights stay on disk (tampkit/models/offload.py): the
    model is a skeleton on the meta device whose parts are read in only while they run.
    """
    if offload not in ("none", "disk"):
        raise UsageError("--offload", f"unknown value '{offload}'", ("none", "disk"))
    plugin = claiming_plugin(spec)
    if offload == "disk" and (plugin is not None or spec in ALIASES or not _looks_like_path(spec)):
        what = "a plug-in's model" if plugin is not None else "an alias" if spec in ALIASES else "a hub id"
        raise UsageError("--offload", f"disk offload reads a local save_pretrained folder; '{spec}' is {what}",
                         "save it to a folder first (model.save_pretrained(DIR); processor.save_pretrained(DIR)) "
                         "or download it, then --model DIR")
    if plugin is not None:
        return plugin.load(spec, dtype)
    if spec in ALIASES:
        return ALIASES[spec]()
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise UsageError("--model", f"model folder not found: {spec}", f"a folder, a hub id or an alias: {', '.join(alias_names())}")
        if not (path / "config.json").exists():
            raise UsageError("--model", f"{spec} has no config.json, so it is not a saved model")
        return _from_pretrained(str(path), dtype, offload)
    if "/" not in spec:
        raise UsageError("--model", f"unknown alias '{spec}'", alias_names() + ["a local folder", "a hub id org/name"])
    try:
        return _from_pretrained(spec, dtype)
    except (OSError, ValueError) as err:
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise UsageError("--model", f"'{spec}' is no local folder and could not be loaded as a hub id (offline?): {first_line}") from err


def model_identity(spec: str) -> str:
    """What names the weights a --model value loads, without loading them (for fingerprints).

    Aliases are built by this package's code (their identity is the alias; the stage code hash
    covers the builder); a local folder is its config plus each weight file's name, size and mtime;
    a hub id is its name (pin a revision in the id to make it exact).
    """
    plugin = claiming_plugin(spec)
    if plugin is not None:
        return plugin.identity(spec)
    path = Path(spec).expanduser()
    if spec in ALIASES or not path.is_dir():
        return f"model:{spec}"
    digest = hashlib.sha256((path / "config.json").read_bytes() if (path / "config.json").exists() else b"")
    for file in sorted(path.iterdir()):
        if file.suffix in (".safetensors", ".bin", ".gguf", ".json"):
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"folder:{path.resolve()}:{digest.hexdigest()[:16]}"
