"""The pruning engine: calibrate, then for each decoder block measure, mask and propagate.

`prune_blocks` is the whole loop; it knows nothing about files or the CLI. Allocation (how many
weights each matrix loses) is decided up front and passed in as counts per matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from tampkit.allocation import uniform_prune_counts
from tampkit.attention_rows import record_last_rows
from tampkit.masks import Structure
from tampkit.methods.base import PruningMethod, SampleContext
from tampkit.models.adapters import ModelBundle, find_linears
from tampkit.runner import (
    BlockInputs,
    capture_block_inputs,
    observe_linears,
    progress_iter,
    run_block,
)


@dataclass
class PruneResult:
    """Masks by full parameter-path name of each Linear (without `.weight`), and planned counts."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)
    #: Per block, what the method reports about it (AMIA: tokens selected per modality).
    blocks: list[dict] = field(default_factory=list)


def decoder_linears(bundle: ModelBundle) -> dict[str, torch.nn.Linear]:
    """Every prunable Linear by full dotted name: the decoder blocks' Linears, nothing else."""
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    return {f"{prefix}.{i}.{name}": linear for i, block in enumerate(layers) for name, linear in find_linears(block).items()}


def uniform_counts(bundle: ModelBundle, sparsity: float) -> dict[str, int]:
    sizes = {name: linear.weight.numel() for name, linear in decoder_linears(bundle).items()}
    return uniform_prune_counts(sizes, sparsity)


@torch.no_grad()
def prune_blocks(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], method: PruningMethod,
                 counts: dict[str, int], structure: Structure, device: torch.device,
                 propagation: str = "pruned", progress: bool = True) -> PruneResult:
    """Prune every decoder block in order; the model is modified in place."""
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    inputs: BlockInputs | None = None
    if method.needs_calibration:
        inputs = capture_block_inputs(bundle, encoded, device, progress_iter(progress, "capture", len(encoded)))
    result = PruneResult()
    for index, block in enumerate(tqdm(layers, desc=f"{method.name} blocks", disable=not progress)):
        original_device = next(block.parameters()).device
        block.to(device)
        linears = find_linears(block)
        block_counts = {name: counts[f"{prefix}.{index}.{name}"] for name in linears}
        dense_outputs = None
        if inputs is not None:
            method.reset()
            context: dict[str, SampleContext] = {}
            on_sample = lambda ctx: context.__setitem__("current", ctx)  # noqa: E731
            observer = lambda name, lin, x, y: method.observe(name, lin, x, y, context["current"])  # noqa: E731
            with observe_linears(linears, observer):
                if method.needs_attention:
                    with record_last_rows(block) as rows:
                        finish = lambda ctx: method.end_sample(ctx, rows.pop())  # noqa: E731
                        dense_outputs = run_block(block, inputs, device, on_sample, finish)
                else:
                    dense_outputs = run_block(block, inputs, device, on_sample)
        result.blocks.append(method.block_summary())
        masks = method.prune(linears, block_counts, structure)
        method.reset()
        if inputs is not None and index + 1 < len(layers):
            outputs = dense_outputs if propagation == "dense" else run_block(block, inputs, device)
            inputs.hidden = outputs
        block.to(original_device)
        for name, mask in masks.items():
            full = f"{prefix}.{index}.{name}"
            result.masks[full] = mask
            result.planned[full] = block_counts[name]
    return result
