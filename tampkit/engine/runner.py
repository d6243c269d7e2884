"""The block runner: capture what decoder block 0 receives, then run one block at a time.

The model stays where it was loaded (CPU); a block moves to the compute device only while it runs,
and the per-sample hidden states wait on the CPU between blocks. Every keyword argument the block
received from its parent (attention mask, position ids, rotary position embeddings, cache flags)
is replayed, so families that pass position embeddings as keywords (transformers 5.x) just work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tampkit.core.ranks import current_ranks
from tampkit.core.types import SampleContext
from tampkit.models.adapters import ModelBundle


class _StopForward(Exception):
    """Raised by the capture hook: nothing after block 0's input is needed."""


@dataclass
class BlockInputs:
    """Per sample: the block's hidden-state input [1, N, d], its keyword arguments, token labels."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    labels: list[torch.Tensor]
    #: Each sample's number in the whole calibration set (under torchrun a rank holds a shard of
    #: it); empty means 0, 1, 2, ... Per-sample choices (seeds, the example sample) key on it.
    indices: list[int] = field(default_factory=list)

    def index(self, position: int) -> int:
        """The calibration-set number of the sample at `position` in this (possibly sharded) set."""
        return self.indices[position] if self.indices else position

    def __len__(self) -> int:
        return len(self.hidden)


def to_device(value: Any, device: torch.device | str) -> Any:
    """Move tensors inside nested tuples/lists/dicts; leave everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class InMemory:
    """Where a model's weights live while the runner works: in memory (the default residency).

    A bundle whose weights stay on disk (`ModelBundle.residency`, see tampkit/models/offload.py)
    replaces both context managers: it loads a block's weights only while that block runs, and the
    rest of the model only while the capture needs it.
    """

    @contextmanager
    def block_on(self, index: int, block: nn.Module, device: torch.device) -> Iterator[None]:
        """Decoder block `index` on `device` for the duration; back where it was after."""
        original_device = next(block.parameters()).device
        block.to(device)
        try:
            yield
        finally:
            block.to(original_device)

    @contextmanager
    def rest_on(self, model: nn.Module, prefix: str, device: torch.device) -> Iterator[None]:
        """Everything but the decoder blocks (embeddings, towers, projector, rotary tables) on `device`."""
        with _everything_but_blocks_on(model, prefix, device):
            yield

    @contextmanager
    def modules_on(self, model: nn.Module, modules: Iterable[nn.Module], device: torch.device) -> Iterator[None]:
        """Some modules of `model` (a loss's final norm and head) on `device`; back where they were after."""
        modules = list(modules)
        original = [next(iter(m.parameters()), torch.empty(0)).device for m in modules]
        for m in modules:
            m.to(device)
        try:
            yield
        finally:
            for m, where in zip(modules, original):
                m.to(where)


def residency(bundle: ModelBundle) -> Any:
    """The bundle's residency (block_on / rest_on), in memory unless the bundle says otherwise."""
    return bundle.residency if bundle.residency is not None else InMemory()


@contextmanager
def _everything_but_blocks_on(model: nn.Module, prefix: str, device: torch.device) -> Iterator[None]:
    """Embeddings, vision tower, projector, rotary tables on `device`; decoder blocks untouched."""
    moved: list[tuple[torch.Tensor, torch.device]] = []
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in tensors:
        if not name.startswith(prefix + ".") and tensor.device != device:
            moved.append((tensor, tensor.device))
            tensor.data = tensor.data.to(device)
    try:
        yield
    finally:
        for tensor, original in moved:
            tensor.data = tensor.data.to(original)


def progress_iter(enabled: bool, desc: str, total: int | None = None) -> Callable[[Iterable], Iterator]:
    """A tqdm wrapper to hand to `capture_block_inputs` (no bar when disabled)."""
    return lambda items: iter(tqdm(items, desc=desc, total=total, disable=not enabled, leave=False))


@torch.no_grad()
def capture_block_inputs(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                         progress: Callable[[Iterator], Iterator] = iter) -> BlockInputs:
    """Run the model up to decoder block 0 for each sample; keep what block 0 receives, on CPU.

    Under torchrun only this rank's shard of `encoded` (see tampkit.core.ranks)."""
    model, adapter = bundle.model, bundle.adapter
    indices = list(current_ranks().shard(len(encoded)))
    prefix, layers = adapter.decoder_layers(model)
    captured: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured["hidden"] = hidden.detach().to("cpu")
        captured["kwargs"] = to_device({k: v for k, v in kwargs.items() if k != "hidden_states"}, "cpu")
        raise _StopForward

    inputs = BlockInputs([], [], [], indices)
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with residency(bundle).rest_on(model, prefix, device):
            for batch in progress([encoded[i] for i in indices]):
                try:
                    model(**to_device(batch, device), use_cache=False)
                except _StopForward:
                    pass
                else:
                    raise RuntimeError("decoder block 0 was never called")
                inputs.hidden.append(captured["hidden"])
                inputs.kwargs.append(captured["kwargs"])
                inputs.labels.append(adapter.modality_labels(model, batch["input_ids"]))
    finally:
        handle.remove()
    return inputs


@contextmanager
def observe_linears(linears: dict[str, nn.Linear],
                    callback: Callable[[str, nn.Linear, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Forward hooks that hand each Linear's [tokens, d] input and output rows (fp32) to callback."""

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, module.in_features).float()
            y = output.detach().reshape(-1, module.out_features).float()
            callback(name, module, x, y)

        return hook

    handles = [linear.register_forward_hook(make_hook(name)) for name, linear in linears.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, device: torch.device,
              on_sample: Callable[[SampleContext], None] | None = None,
              after_sample: Callable[[SampleContext], None] | None = None) -> list[torch.Tensor]:
    """Run one block over every sample; returns its outputs (on CPU), one per sample.

    `on_sample` runs before a sample's forward (hooks learn which sample they see), `after_sample`
    after it (methods that need the whole forward, such as AMIA's attention row, finish there).
    """
    outputs = []
    for i, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs)):
        ctx = SampleContext(index=inputs.index(i), labels=inputs.labels[i])
        if on_sample is not None:
            on_sample(ctx)
        out = block(hidden.to(device), **to_device(kwargs, device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        outputs.append(out.detach().to("cpu"))
        if after_sample is not None:
            after_sample(ctx)
    return outputs



#: measure(index, block, inputs, want_outputs) -> (tensors, record, outputs): compute a block's
#: result (it may modify the block); with want_outputs, also its outputs for the next block.
Measure = Callable[[int, nn.Module, "BlockInputs | None", bool],
                   tuple[dict[str, torch.Tensor], dict, "list[torch.Tensor] | None"]]
#: restore(index, block, inputs, tensors, record) -> outputs: apply a stored result to the block
#: and, when inputs are given, replay its forward for the next block (nothing is measured).
Restore = Callable[[int, nn.Module, "BlockInputs | None", dict[str, torch.Tensor], dict],
                   "list[torch.Tensor] | None"]


@torch.no_grad()
def walk_blocks(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                measure: Measure, restore: Restore, store: Any = None, needs_inputs: bool = True,
                progress: bool = True, desc: str = "blocks") -> None:
    """Visit every decoder block in order: restore it from `store` (a BlockStore) when a valid file
    is there, else measure it and save it.

    Hidden states flow only up to the last block still to compute: a fully stored stage runs no
    forward at all, and a resumed one replays the finished blocks' forwards (cheap, deterministic)
    instead of measuring them again.
    """
    _, layers = bundle.adapter.decoder_layers(bundle.model)
    # which blocks are stored (each file read and verified, then dropped: a resumed SparseGPT run of
    # a model larger than RAM must not hold every stored block's weights at once)
    stored = [store is not None and store.valid(i) for i in range(len(layers))]
    current_ranks().barrier()  # every rank has read the store before rank 0 adds to it
    todo = [i for i, hit in enumerate(stored) if not hit]
    last_needed = todo[-1] if todo else -1
    inputs: BlockInputs | None = None
    if needs_inputs and last_needed >= 0:
        inputs = capture_block_inputs(bundle, encoded, device, progress_iter(progress, "capture", len(encoded)))
    for index, block in enumerate(tqdm(layers, desc=desc, disable=not progress)):
        live = inputs if index <= last_needed else None
        want_outputs = live is not None and index < last_needed
        with residency(bundle).block_on(index, block, device):
            if stored[index]:
                found = store.load(index)
                if found is None:
                    raise RuntimeError(f"{desc}: block {index}'s stored file changed during the run ({store.path(index)})")
                tensors, record = found
                outputs = restore(index, block, live if want_outputs else None, tensors, record)
            else:
                tensors, record, outputs = measure(index, block, live, want_outputs)
                if store is not None:
                    store.save(index, tensors, record)
        if want_outputs:
            assert outputs is not None and inputs is not None
            inputs.hidden = outputs
