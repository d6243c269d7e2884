"""Disk offload: models larger than RAM (`--offload disk`, params key `model.offload`).

The model is built as a skeleton: every parameter on the meta device (no memory), the buffers
real (rotary tables, position ids: tiny, and non-persistent ones are not in any checkpoint). A
`DiskOffload` residency (see `tampkit.engine.runner.residency`) then reads a decoder block's
tensors from the checkpoint's safetensors files only while that block runs, and the embeddings and
vision/audio towers only while the capture of block 0's inputs needs them; afterwards the module
holds meta tensors again. `OffloadWriter` writes a checkpoint the same way, one shard per block as
blocks finish, then the rest, so nothing ever holds more than one block's weights.

Reading: each tensor's bytes are read (`readinto`) from its offset in the safetensors file into a
buffer of its own. A memory map would count every page it touched in the resident size until the
last tensor of that file died, and pruning writes into the weights in place; a plain read keeps
exactly one copy, owned by the parameter, freed when the block is done.

Names: transformers renames some families' checkpoint keys when it loads them (LLaVA's
`language_model.model.layers.*` is the module `model.language_model.layers.*`) and renames them
back when it saves. The skeleton maps keys with transformers' own renaming rules (as
`from_pretrained` does, so it records the same `_weight_conversions`) and the writer names its
tensors as `save_pretrained` would (tied weights once, renamings reverted). Checkpoints that need
more than renaming (fused or split tensors) are refused with a clear error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import transformers as tf
from torch import nn

from tampkit.core.errors import UsageError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _DTYPES.items()}


# -- reading ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes are in a safetensors file."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """The tensors of one safetensors file (by key) and its metadata, from the header alone."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for key, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise UsageError("--offload", f"{path.name}: tensor {key} has dtype {info['dtype']}, which offload cannot read")
        begin, end = info["data_offsets"]
        entries[key] = Entry(path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + begin, end - begin)
    return entries, metadata


def read_tensor(handle: BinaryIO, entry: Entry) -> torch.Tensor:
    """One tensor read into memory of its own (no memory map)."""
    buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    handle.seek(entry.offset)
    done = 0
    while done < entry.nbytes:  # one read returns at most ~2 GiB on Linux
        count = handle.readinto(view[done:])
        if not count:
            raise OSError(f"{entry.file}: truncated tensor at byte {entry.offset + done}")
        done += count
    return buffer.view(entry.dtype).reshape(entry.shape)


class Checkpoint:
    """The safetensors weights of a `save_pretrained` folder: one `model.safetensors`, or shards
    named by `model.safetensors.index.json`. Only headers are read up front."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.exists():
            data = json.loads(index.read_text())
            files = sorted(set(data["weight_map"].values()))
            self.index_metadata: dict[str, Any] | None = data.get("metadata") or {}
        elif (self.folder / SINGLE_FILE).exists():
            files, self.index_metadata = [SINGLE_FILE], None
        else:
            raise UsageError("--offload", f"{self.folder} has no {SINGLE_FILE} or {INDEX_FILE}",
                             "a folder written by save_pretrained with safetensors weights")
        self.files = [self.folder / name for name in files]
        self.entries: dict[str, Entry] = {}
        for file in self.files:
            self.entries.update(read_header(file)[0])

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors of `keys`, each read into its own memory (one open per file)."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.entries[key].file, []).append(key)
        tensors = {}
        for file, names in by_file.items():
            with open(file, "rb", buffering=0) as handle:
                for key in sorted(names, key=lambda k: self.entries[k].offset):
                    tensors[key] = read_tensor(handle, self.entries[key])
        return tensors


# -- the skeleton -----------------------------------------------------------------------------------

def _init_contexts(model_cls: type, dtype: torch.dtype) -> list[Any]:
    """transformers' own init contexts of `from_pretrained` (dtype, no weight init, patches), with
    its meta device replaced by accelerate's: parameters on meta, buffers built for real."""
    from accelerate import init_empty_weights

    contexts = [c for c in model_cls.get_init_context(dtype, False, False, None) if not isinstance(c, torch.device)]
    return [*contexts, init_empty_weights(include_buffers=False)]


def _weight_keys(model: nn.Module, checkpoint: Checkpoint) -> dict[str, str]:
    """Model state-dict name -> checkpoint key, by transformers' renaming rules as from_pretrained
    applies them; records the rules used on the model (`_weight_conversions`, read when saving)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model, None, None)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta_state = model.state_dict()
    prefix = model.base_model_prefix
    found: dict[str, str] = {}
    for key in checkpoint.keys():
        name, pattern = rename_source_key(key, renamings, converters, prefix, meta_state)
        if name not in meta_state and key in meta_state:
            name, pattern = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta_state)
        if name not in meta_state:
            continue  # not this model's (a full checkpoint's other parts): from_pretrained skips them too
        if pattern is not None:
            raise UsageError("--offload", f"checkpoint tensor {key} must be converted (fused or split) to load into "
                             f"{type(model).__name__}; offload reads tensors that map one to one",
                             "--offload none, or a checkpoint saved with one tensor per parameter")
        found[name] = key
    model._weight_conversions = [c for c in conversions if c.was_used()]  # as from_pretrained leaves it
    # tied parameters are saved once: every alias reads the saved one
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    for names in groups.values():
        source = next((found[n] for n in names if n in found), None)
        if source is not None:
            found.update({n: source for n in names})
    missing = [name for name in meta_state if name not in found and _is_parameter(model, name)]
    if missing:
        raise UsageError("--offload", f"{len(missing)} parameters of {type(model).__name__} are not in "
                         f"{checkpoint.folder} (first: {missing[0]}); offload cannot initialise them",
                         "--offload none")
    return found


def _is_parameter(model: nn.Module, name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return attr in model.get_submodule(module)._parameters


def build_skeleton(model_cls: type, source: str, dtype: str) -> tuple[nn.Module, Checkpoint, dict[str, str]]:
    """The model with every parameter on meta, as `from_pretrained(source, dtype=...)` would build
    it (config, dtype resolution, tied weights, generation config); its checkpoint and key map."""
    from transformers.modeling_utils import _get_dtype

    checkpoint = Checkpoint(source)
    config = tf.AutoConfig.from_pretrained(source)
    wanted = "auto" if dtype == "auto" else getattr(torch, dtype)
    config, torch_dtype = _get_dtype(wanted, [str(f) for f in checkpoint.files], config, checkpoint.index_metadata,
                                     None, True)
    config.name_or_path = source
    with ExitStack() as stack:
        for context in _init_contexts(model_cls, torch_dtype):
            stack.enter_context(context)
        model = model_cls(config)
    plan = model._get_dtype_plan(torch_dtype)  # keep_in_fp32 modules, matched as from_pretrained does
    if plan:
        from transformers.core_model_loading import build_glob_alternation

        alternation, group_glob, _ = build_glob_alternation(list(plan))
        for name, param in list(model.named_parameters()):
            if (match := alternation.search(name)) is not None:
                kept = plan[group_glob[match.lastgroup]]
                _set_tensor(model, name, nn.Parameter(param.to(kept), requires_grad=param.requires_grad))
    model.tie_weights()
    keys = _weight_keys(model, checkpoint)
    persistent = [name for name in model.state_dict() if not _is_parameter(model, name) and name in keys]
    for name, tensor in checkpoint.read(keys[n] for n in persistent).items():  # persistent buffers: loaded once
        target = next(n for n in persistent if keys[n] == name)
        _set_tensor(model, target, tensor.to(model.get_buffer(target).dtype))
    if model.can_generate():
        generation = Path(source) / "generation_config.json"
        model.generation_config = (tf.GenerationConfig.from_pretrained(source) if generation.exists()
                                   else tf.GenerationConfig.from_model_config(config))
    return model.eval(), checkpoint, keys


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put `value` in the parameter or buffer slot `name` (dotted, under `root`), bypassing checks."""
    module_name, _, attr = name.rpartition(".")
    module = root.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = value  # type: ignore[assignment]
    else:
        module._buffers[attr] = value


# -- the residency ----------------------------------------------------------------------------------

class DiskOffload:
    """Where an offloaded model's weights live: on disk, in the model's checkpoint.

    `block_on`, `rest_on` and `modules_on` read the tensors a part of the model needs, put them
    on the device for the duration and put meta tensors back after (the runner's residency
    protocol). The residency holds no model: a deep copy of the skeleton (a stage's working copy)
    is served the same way, by name.
    """

    def __init__(self, checkpoint: Checkpoint, keys: dict[str, str], prefix: str,
                 head_names: tuple[str, ...] = ()) -> None:
        self.checkpoint = checkpoint
        self.keys = keys  # model parameter name -> checkpoint key
        self.prefix = prefix  # the decoder blocks' ModuleList
        self.head_names = head_names  # the final norm and LM head: never needed by the capture
        #: Bytes read from disk so far (for the report and the tests).
        self.bytes_read = 0

    @contextmanager
    def block_on(self, index: int, block: nn.Module, device: torch.device) -> Iterator[None]:
        """Decoder block `index`'s weights read from disk onto `device`; meta again after."""
        with self.loaded(block, f"{self.prefix}.{index}", device):
            yield

    @contextmanager
    def rest_on(self, model: nn.Module, prefix: str, device: torch.device) -> Iterator[None]:
        """Everything the capture of block 0's inputs runs (embeddings, vision/audio towers,
        projector) read onto `device`; the decoder blocks, the final norm and the head stay on meta."""
        skip = (prefix, *self.head_names)
        with self.loaded(model, "", device, skip=lambda name: any(name == s or name.startswith(s + ".") for s in skip)):
            yield

    @contextmanager
    def modules_on(self, model: nn.Module, modules: Iterable[nn.Module], device: torch.device) -> Iterator[None]:
        """Any modules of `model` (the final norm and the head of a loss) on `device` for the duration."""
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        with ExitStack() as stack:
            for module in modules:
                stack.enter_context(self.loaded(module, names[id(module)], device))
            yield

    @contextmanager
    def loaded(self, root: nn.Module, root_name: str, device: torch.device,
               skip: Any = None) -> Iterator[None]:
        """Every meta parameter under `root` (named `root_name` in the model) read from disk and
        cast to its dtype, on `device`, and `root`'s buffers moved there; all put back after. Tied
        parameters are read once and shared, as in the model."""
        device = torch.device(device)
        put_back: list[tuple[nn.Module, str, nn.Parameter]] = []
        moved: list[tuple[torch.Tensor, torch.device]] = []
        wanted: dict[str, list[tuple[nn.Module, str, nn.Parameter]]] = {}
        for local, param in root.named_parameters(remove_duplicate=False):
            full = f"{root_name}.{local}" if root_name else local
            if param.device.type != "meta" or (skip is not None and skip(full)):
                continue
            module_name, _, attr = local.rpartition(".")
            wanted.setdefault(self.keys[full], []).append((root.get_submodule(module_name), attr, param))
        try:
            read = self.checkpoint.read(wanted)
            for key, slots in wanted.items():
                tensor = read.pop(key)
                self.bytes_read += tensor.numel() * tensor.element_size()
                value = nn.Parameter(tensor.to(device=device, dtype=slots[0][2].dtype), requires_grad=slots[0][2].requires_grad)
                del tensor
                for module, attr, original in slots:
                    module._parameters[attr] = value
                    put_back.append((module, attr, original))
            for local, buffer in root.named_buffers(remove_duplicate=False):
                full = f"{root_name}.{local}" if root_name else local
                if buffer.device != device and not (skip is not None and skip(full)):
                    moved.append((buffer, buffer.device))
                    buffer.data = buffer.data.to(device)
            yield
        finally:
            for module, attr, original in put_back:
                module._parameters[attr] = original
            for buffer, where in moved:
                buffer.data = buffer.data.to(where)
            del put_back, wanted
            release_freed_memory()


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc


_LIBC = _libc()
#: glibc's mallopt parameters, and what an offloaded run sets them to (see `keep_heap_small`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 << 20


def keep_heap_small() -> None:
    """Allocations of 4 MiB and more get their own memory map, handed back to the OS when freed.

    glibc's default threshold rises to 32 MiB as soon as one large buffer is freed; from then on,
    activations and statistics up to that size come from the heap, which keeps their pages after
    they are freed, and each block's buffers pile on top of the last one's. An offloaded run sets
    it once, for the whole process: a little more page-faulting, a peak that stays one block high.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere). Without it
    a block's freed weights and activations stay resident and the next block's pile on top of them."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def offloaded(model: nn.Module) -> bool:
    """Whether any parameter of `model` is on the meta device (a skeleton)."""
    return any(p.device.type == "meta" for p in model.parameters())


def load_offloaded(model_cls: type, source: str, dtype: str, adapter: Any) -> tuple[nn.Module, DiskOffload]:
    """The skeleton of the model in `source` and the residency that reads its weights."""
    keep_heap_small()
    model, checkpoint, keys = build_skeleton(model_cls, source, dtype)
    prefix, _ = adapter.decoder_layers(model)
    try:
        norm, head = adapter.output_head(model)
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        head_names = tuple(names[id(m)] for m in (norm, head))
    except NotImplementedError:
        head_names = ()
    return model, DiskOffload(checkpoint, keys, prefix, head_names)


# -- writing ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """One tensor to be written: its key in the file, dtype and shape."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class SafetensorsWriter:
    """A safetensors file written one tensor at a time: the header first (every tensor's dtype,
    shape and place are known up front), then each tensor's bytes, in the order of `specs`."""

    def __init__(self, path: Path, specs: list[Spec], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for spec in self.specs:
            header[spec.key] = {"dtype": _NAMES[spec.dtype], "shape": list(spec.shape),
                                "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        self.size = offset
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._handle.write(len(text).to_bytes(8, "little") + text)
        self._next = 0

    def write(self, key: str, tensor: torch.Tensor) -> None:
        spec = self.specs[self._next]
        if key != spec.key or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(f"{self.path.name}: expected {spec}, got {key} {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            self._handle.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1

    def abort(self) -> None:
        """Close without checking (the caller is failing anyway; the folder is discarded)."""
        self._handle.close()

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self._next != len(self.specs):
            raise ValueError(f"{self.path.name}: {len(self.specs) - self._next} tensors were never written")


def saved_names(model: nn.Module) -> dict[str, str]:
    """State-dict name -> the key `save_pretrained` writes it under; tied aliases are left out
    (saved once, as transformers does) and renamings reverted (LLaVA's legacy layout)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    reverted = revert_weight_conversion(model, dict(state))
    by_tensor = {id(tensor): key for key, tensor in reverted.items()}
    names = {name: by_tensor.get(id(tensor)) for name, tensor in state.items()}
    if None in names.values() or len(reverted) != len(state):
        raise UsageError("--offload", f"{type(model).__name__} saves fused or split tensors; offload writes tensors "
                         "that map one to one", "--offload none")
    return names  # type: ignore[return-value]


class OffloadWriter:
    """A pruned checkpoint written like `save_pretrained`, shard by shard: one shard per decoder
    block (`write_block`, as blocks finish), then one with the rest read from the source (`finish`),
    then the index, the config and the generation config. Write into a temporary folder and rename
    it (the stage runner does); a half-written folder has no index."""

    def __init__(self, model: nn.Module, residency: DiskOffload, folder: Path) -> None:
        self.model = model
        self.residency = residency
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names = saved_names(model)
        layers = model.get_submodule(residency.prefix)
        self.block_names: list[list[str]] = [[] for _ in layers]
        self.rest_names: list[str] = []
        pattern = re.compile(re.escape(residency.prefix) + r"\.(\d+)\.")
        for name in self.names:
            match = pattern.match(name)
            (self.block_names[int(match.group(1))] if match else self.rest_names).append(name)
        self.count = len(layers) + 1
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def _file(self, shard: int) -> str:
        return f"model-{shard + 1:05d}-of-{self.count:05d}.safetensors"

    def _specs(self, names: list[str], tensors: dict[str, torch.Tensor] | None = None) -> list[Spec]:
        specs = []
        for name in names:
            tensor = tensors[name] if tensors is not None else self.model.get_parameter_or_buffer(name)
            specs.append(Spec(self.names[name], tensor.dtype, tuple(tensor.shape)))
        return specs

    def write_block(self, index: int, block: nn.Module) -> None:
        """Block `index`'s tensors (its weights read in and pruned: call inside `block_on`) to its shard."""
        local = block.state_dict()
        head = f"{self.residency.prefix}.{index}."
        tensors = {name: local[name[len(head):]] for name in self.block_names[index]}
        self._write(index, self.block_names[index], lambda name: tensors[name], tensors)

    def finish(self, extra_files: Any = None) -> None:
        """The rest of the model (read from the source tensor by tensor), the index and the configs."""
        def rest(name: str) -> torch.Tensor:
            value = self.model.get_parameter_or_buffer(name)
            if value.device.type != "meta":
                return value
            return self.residency.checkpoint.read([self.residency.keys[name]])[self.residency.keys[name]].to(value.dtype)

        self._write(self.count - 1, self.rest_names, rest)
        index = {"metadata": {"total_parameters": self.model.num_parameters(), "total_size": self.total_size},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        config = self.model.config
        config.dtype = str(self.model.dtype).split(".")[1]  # what save_pretrained records
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(self.folder)
        if self.model.can_generate():
            self.model.generation_config.save_pretrained(self.folder)

    def _write(self, shard: int, names: list[str], get: Any, tensors: dict[str, torch.Tensor] | None = None) -> None:
        names = sorted(names, key=lambda n: self.names[n])
        specs = self._specs(names, tensors)
        writer = SafetensorsWriter(self.folder / self._file(shard), specs, {"format": "pt"})
        try:
            for name, spec in zip(names, specs):
                writer.write(spec.key, get(name))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        self.total_size += writer.size
        self.weight_map.update({spec.key: self._file(shard) for spec in specs})

