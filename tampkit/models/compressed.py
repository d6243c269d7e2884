"""Compressed sparse checkpoints: the pruned decoder Linears stored as bitmask + kept values.

Why: a pruned checkpoint saved dense keeps every zero at full width, so 50% sparsity saves no disk.
Here each pruned Linear weight `W` (rows x cols) of a `save_pretrained` folder is replaced by the
tensors of compressed-tensors' sparse formats, and `config.json` gets the `quantization_config`
(`quant_method: compressed-tensors`, a `sparsity_config`) that describes them:

- `sparse-bitmask` (any mask): `<module>.bitmask` (uint8, rows x ceil(cols/8), bit j of row i set
  where W[i, j] is kept, little-endian bit order), `<module>.compressed` (the kept values in
  row-major order, W's dtype), `<module>.row_offsets` (int64: where each row starts in
  `compressed`), `<module>.shape` (int64 [rows, cols]). 1 bit per weight + the kept values.
- `sparse-24-bitmask` (2:4 masks): the same bitmask, `compressed` as rows x cols/2 (exactly two
  values of each group of four, padded with kept zeros where a group lost more), `shape` as a
  2 x 1 int64 column.

These are the tensor layouts compressed-tensors <= 0.14 wrote and read (its `BitmaskCompressor`,
`Sparse24BitMaskCompressor`). compressed-tensors 0.15+ (0.20.0 here) still ships their configs
(`BitmaskConfig`, `Sparse24BitMaskConfig`) and bit packing (`pack_bitmasks`), but no longer the
compressors, and transformers 5.23's compressed-tensors integration ignores `sparsity_config`: a bare
`from_pretrained` of such a folder leaves the compressed Linears freshly initialised (it only prints a
MISSING/UNEXPECTED key table). So this module compresses and decompresses itself, with the library's
config classes and bit packing, and `tampkit.models.loading.load_model` loads these folders through
`dense_state_dict` (bit-identical to the dense save of the same masks). vLLM removed sparse
compressed-tensors models too (Sparse24, March 2026): serve the dense save, or `decompress_folder`.

Every file is written to a temporary name beside its target and renamed (a killed run leaves either
the old file or the new one, never half of one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

BITMASK = "sparse-bitmask"
SPARSE24 = "sparse-24-bitmask"
#: The tensors each format stores per compressed weight, under `<module>.<part>`.
PARTS: dict[str, tuple[str, ...]] = {BITMASK: ("shape", "compressed", "bitmask", "row_offsets"),
                                     SPARSE24: ("shape", "compressed", "bitmask")}
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _pack(bytemask: torch.Tensor) -> torch.Tensor:
    from compressed_tensors.utils.helpers import pack_bitmasks

    return pack_bitmasks(bytemask.cpu())


def _unpack(bitmask: torch.Tensor, shape: list[int]) -> torch.Tensor:
    from compressed_tensors.utils.helpers import unpack_bitmasks

    return unpack_bitmasks(bitmask, shape)


_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def kept(weight: torch.Tensor) -> torch.Tensor:
    """Where the weight is stored: any bit set (a -0.0 too, so the round trip is bit for bit)."""
    return weight.view(_SAME_WIDTH_INT[weight.element_size()]) != 0


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether at most two of every four consecutive weights of each row are kept (2:4 along inputs)."""
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and bool((kept(weight).view(-1, 4).sum(1) <= 2).all())


def compress_weight(weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """The stored parts (`shape`, `compressed`, `bitmask`[, `row_offsets`]) of one 2-D weight."""
    weight = weight.detach().cpu().contiguous()
    rows, cols = weight.shape
    if fmt == SPARSE24:
        if not is_two_four(weight):
            raise ValueError(f"weight of shape {tuple(weight.shape)} is not 2:4 sparse along its inputs")
        groups = weight.view(-1, 4)
        # each group keeps its stored values, padded with (stored) zeros to exactly two
        order = kept(groups).to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :2].sort(dim=1).values
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True).view(rows, cols)
        return {"shape": torch.tensor([rows, cols]).reshape(-1, 1), "compressed": weight[mask].reshape(rows, cols // 2),
                "bitmask": _pack(mask)}
    if fmt != BITMASK:
        raise ValueError(f"unknown sparse format {fmt!r} (allowed: {BITMASK}, {SPARSE24})")
    mask = kept(weight)
    counts = mask.sum(dim=1)
    return {"shape": torch.tensor([rows, cols]), "compressed": weight[mask],
            "bitmask": _pack(mask), "row_offsets": torch.cumsum(counts, 0) - counts}


def decompress_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight back from its stored parts (either format: the bitmask says where)."""
    shape = [int(x) for x in parts["shape"].flatten().tolist()]
    values = parts["compressed"].flatten()
    return torch.zeros(shape, dtype=values.dtype).masked_scatter_(_unpack(parts["bitmask"], shape), values)


# --- folders ---------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[str]:
    """The safetensors files of a `save_pretrained` folder (shards from the index, else the single file)."""
    index = folder / INDEX_FILE
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [SINGLE_FILE] if (folder / SINGLE_FILE).exists() else []


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it when the block succeeds, removed when not."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with _replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sparsity_config(folder: Path | str) -> dict[str, Any] | None:
    """The `sparsity_config` of a folder saved by `compress_folder` (None: a dense checkpoint)."""
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    for key in ("quantization_config", "compression_config"):  # the latter: compressed-tensors' legacy name
        sparsity = (config.get(key) or {}).get("sparsity_config") or {}
        if sparsity.get("format") in PARTS:
            return sparsity
    return None


def compress_folder(folder: Path | str, weight_keys: Iterable[str], structure: str = "unstructured") -> dict[str, Any]:
    """Rewrite a dense `save_pretrained` folder in place: each `weight_keys` tensor (the pruned decoder
    Linears' `....weight` keys) becomes its compressed parts, in the same shard; the index and
    `config.json` follow. Everything else (embeddings, towers, lm_head, norms) is left as saved.
    Returns the `sparsity_config` written. One shard is in memory at a time."""
    folder = Path(folder)
    targets = set(weight_keys)
    files = weight_files(folder)
    fmt = BITMASK
    if structure == "2:4":  # one format for the whole checkpoint: check every target is 2:4 first
        ok = True
        for name in files:
            with safe_open(str(folder / name), "pt") as handle:
                ok = ok and all(is_two_four(handle.get_tensor(k)) for k in handle.keys() if k in targets)
        fmt = SPARSE24 if ok else BITMASK
    found, zeros, numel = set(), 0, 0
    new_map: dict[str, str] = {}
    for name in files:
        with safe_open(str(folder / name), "pt") as handle:
            metadata = handle.metadata() or {"format": "pt"}
            keys = list(handle.keys())
            mine = [k for k in keys if k in targets]
            if not mine:
                new_map.update({k: name for k in keys})
                continue
            tensors: dict[str, torch.Tensor] = {}
            for key in keys:
                tensor = handle.get_tensor(key)
                if key not in targets:
                    tensors[key] = tensor
                    continue
                module = key.removesuffix(".weight")
                parts = compress_weight(tensor, fmt)
                zeros += tensor.numel() - int(kept(parts["compressed"]).sum())  # 2:4 pads with stored zeros
                numel += tensor.numel()
                tensors.update({f"{module}.{part}": value for part, value in parts.items()})
                found.add(key)
        with _replacing(folder / name) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        new_map.update({k: name for k in tensors})
        del tensors
    if found != targets:
        raise KeyError(f"{len(targets - found)} weights to compress are not in {folder}: {sorted(targets - found)[:3]}")
    if (folder / INDEX_FILE).exists():
        index = json.loads((folder / INDEX_FILE).read_text())
        index["weight_map"] = dict(sorted(new_map.items()))
        index.setdefault("metadata", {})["total_size"] = sum((folder / f).stat().st_size for f in files)
        _write_json(folder / INDEX_FILE, index)
    return _write_config(folder, fmt, sorted(k.removesuffix(".weight") for k in targets), zeros / max(numel, 1),
                         "2:4" if fmt == SPARSE24 else structure)


def _write_config(folder: Path, fmt: str, targets: list[str], sparsity: float, structure: str) -> dict[str, Any]:
    """`quantization_config` in config.json, as compressed-tensors' ModelCompressor wrote it for a
    sparse-only model (no quantization groups): quant_method, version, sparsity_config."""
    import compressed_tensors
    from compressed_tensors.config import SparsityCompressionConfig

    sparsity = SparsityCompressionConfig.load_from_registry(
        fmt, targets=targets, ignore=[], global_sparsity=round(sparsity, 6), sparsity_structure=structure).model_dump()
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "version": compressed_tensors.__version__,
                                     "format": fmt, "sparsity_config": sparsity}
    _write_json(folder / CONFIG_FILE, config)
    return sparsity


def dense_state_dict(folder: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of a compressed folder, the compressed Linears decompressed to `<module>.weight`:
    the state dict the dense save of the same masks holds, bit for bit."""
    folder = Path(folder)
    config = sparsity_config(folder)
    parts = PARTS[config["format"]] if config is not None else ()
    modules = set(config["targets"]) if config is not None else set()
    state: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name in weight_files(folder):
        with safe_open(str(folder / name), "pt") as handle:
            for key in handle.keys():
                module, _, part = key.rpartition(".")
                if module in modules and part in parts:
                    pending.setdefault(module, {})[part] = handle.get_tensor(key)
                    if len(pending[module]) == len(parts):
                        state[f"{module}.weight"] = decompress_weight(pending.pop(module))
                else:
                    state[key] = handle.get_tensor(key)
    missing = (modules - {k.removesuffix(".weight") for k in state}) | set(pending)
    if missing:
        raise ValueError(f"{folder}: compressed weights incomplete for {sorted(missing)[:3]}")
    return state


def dense_config(folder: Path | str) -> Any:
    """The folder's transformers config without its `quantization_config` (loaded weights are dense)."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(str(folder))
    for key in ("quantization_config", "compression_config"):
        if hasattr(config, key):
            delattr(config, key)
    return config


def load_pretrained(model_cls: Any, folder: Path | str, **kwargs: Any) -> torch.nn.Module:
    """`model_cls.from_pretrained(folder)` of a compressed folder: the weights decompressed here (see
    the module docstring for why transformers cannot), the config without its compression block."""
    import transformers as tf

    # transformers takes a state dict only without a path (`None`); the generation config is read here
    config = dense_config(folder)
    if hasattr(model_cls, "_model_mapping"):  # an Auto class: the class it would pick (it needs a path)
        model_cls = model_cls._model_mapping[type(config)]
    model = model_cls.from_pretrained(None, config=config, state_dict=dense_state_dict(folder), **kwargs)
    if (Path(folder) / "generation_config.json").exists():
        model.generation_config = tf.GenerationConfig.from_pretrained(str(folder))
    return model


def decompress_folder(source: Path | str, target: Path | str) -> None:
    """A dense copy of a compressed folder (for vLLM, or any loader without this module): the
    weights as one `model.safetensors`, config.json without the compression block, the other files
    (tokenizer, processor, masks) copied. Written into a temporary folder, then renamed."""
    import shutil

    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        skip = set(weight_files(source)) | {INDEX_FILE, CONFIG_FILE}
        for item in source.iterdir():
            if item.name not in skip and item.is_file():
                shutil.copy2(item, tmp / item.name)
        config = json.loads((source / CONFIG_FILE).read_text())
        config.pop("quantization_config", None)
        config.pop("compression_config", None)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in dense_state_dict(source).items()}, str(tmp / SINGLE_FILE),
                  metadata={"format": "pt"})
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
