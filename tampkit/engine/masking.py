"""The pruning engine: calibrate, then for each decoder block measure, mask and propagate.

`prune_blocks` is the whole loop; it knows nothing about files or the CLI. Allocation (how many
weights each matrix loses) is decided up front and passed in as counts per matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tampkit.engine.attention_rows import record_last_rows
from tampkit.store.block_store import BlockStore
from tampkit.core.errors import UsageError
from tampkit.core.masks import pack_mask, unpack_mask
from tampkit.core.ranks import Ranks, current_ranks
from tampkit.core.types import Structure
from tampkit.core.types import SampleContext
from tampkit.methods.base import PruningMethod, apply_mask
from tampkit.methods.wanda import wanda_masks, wanda_scores
from tampkit.models.adapters import ModelBundle, find_linears
from tampkit.engine.runner import BlockInputs, observe_linears, run_block, walk_blocks


@dataclass
class PruneResult:
    """Masks by full parameter-path name of each Linear (without `.weight`), and planned counts."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)
    #: Per block, what the method reports about it (AMIA: tokens selected per modality).
    blocks: list[dict] = field(default_factory=list)

    def add_block(self, prefix: str, index: int, masks: dict[str, torch.Tensor], planned: dict[str, int],
                  summary: dict, keep_masks: bool = True) -> None:
        """Block `index`'s summary, planned counts and (with `keep_masks`) masks, by full Linear name."""
        self.blocks.append(summary)
        for name, mask in masks.items():
            if keep_masks:
                self.masks[f"{prefix}.{index}.{name}"] = mask
            self.planned[f"{prefix}.{index}.{name}"] = planned[name]


def decoder_linears(bundle: ModelBundle) -> dict[str, torch.nn.Linear]:
    """Every prunable Linear by full dotted name: the decoder blocks' Linears, nothing else."""
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    return {f"{prefix}.{i}.{name}": linear for i, block in enumerate(layers) for name, linear in find_linears(block).items()}


def _block_tensors(masks: dict[str, torch.Tensor], linears: dict[str, torch.nn.Linear],
                   with_weights: bool) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """A block's result as stored: bit-packed masks (and, for SparseGPT, the updated weights)."""
    tensors = {f"mask.{name}": torch.from_numpy(pack_mask(mask)) for name, mask in masks.items()}
    if with_weights:
        tensors.update({f"weight.{name}": linears[name].weight.detach().cpu() for name in masks})
    return tensors, {name: list(mask.shape) for name, mask in masks.items()}


def _apply_stored_block(block: torch.nn.Module, tensors: dict[str, torch.Tensor], record: dict) -> dict[str, torch.Tensor]:
    """Put a stored block result into the block (new weights first, then zeros); return its masks."""
    linears = find_linears(block)
    masks = {name: unpack_mask(tensors[f"mask.{name}"].numpy(), tuple(shape)) for name, shape in record["shapes"].items()}
    for name, mask in masks.items():
        if f"weight.{name}" in tensors:
            linears[name].weight.copy_(tensors[f"weight.{name}"])
        apply_mask(linears[name], mask)
    return masks


@torch.no_grad()
def decide_on_main(ranks: Ranks, method: PruningMethod, linears: dict[str, torch.nn.Linear], counts: dict[str, int],
                   structure: Structure) -> dict[str, torch.Tensor]:
    """The block's masks, chosen by rank 0 and sent to every rank (torchrun; one process: chosen here).

    Rank 0 prunes (and, for SparseGPT, updates the weights); the others receive each mask (and the
    new weights) in the block's Linear order, so every rank propagates through the same block.
    """
    if not ranks.parallel:
        return method.prune(linears, counts, structure)
    masks = method.prune(linears, counts, structure) if ranks.is_main else {}
    for name, linear in linears.items():
        mask = masks.get(name, torch.zeros(linear.weight.shape, dtype=torch.bool))
        masks[name] = ranks.broadcast(mask)
        if method.updates_weights:
            linear.weight.copy_(ranks.broadcast(linear.weight.detach()))
        elif not ranks.is_main:
            apply_mask(linear, masks[name])
    return masks


@torch.no_grad()
def apply_stored_blocks(bundle: ModelBundle, store: BlockStore) -> PruneResult:
    """Prune a fresh model with the block files of a finished masks stage; every block must be there."""
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    result = PruneResult()
    for index, block in enumerate(layers):
        stored = store.load(index)
        if stored is None:
            raise UsageError("masks", f"block {index} has no valid file in {store.folder}", "rerun the masks stage")
        tensors, record = stored
        result.add_block(prefix, index, _apply_stored_block(block, tensors, record), record["planned"], record["summary"])
    return result


@torch.no_grad()
def prune_blocks(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], method: PruningMethod,
                 counts: dict[str, int], structure: Structure, device: torch.device,
                 propagation: str = "pruned", progress: bool = True, store: BlockStore | None = None,
                 keep_masks: bool = True) -> PruneResult:
    """Prune every decoder block in order; the model is modified in place.

    With a `store`, each finished block's masks go to their own file and blocks already there
    (same fingerprint, intact) are applied instead of measured: a killed run resumes, and ends
    with the same masks as an unbroken one because replayed forwards are the same computation.
    Without `keep_masks` the result holds the planned counts and summaries only (the masks are in
    the store): a byte per weight less, what keeps an offloaded model's stage within one block.
    """
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    result = PruneResult()
    ranks = current_ranks()

    def measure(index: int, block: torch.nn.Module, inputs: BlockInputs | None, want_outputs: bool):
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
            method.reduce(ranks)  # torchrun: every rank's samples (one process: nothing to do)
        summary = method.block_summary()
        masks = decide_on_main(ranks, method, linears, block_counts, structure)
        method.reset()
        outputs = None
        if want_outputs and inputs is not None:
            outputs = dense_outputs if propagation == "dense" else run_block(block, inputs, device)
        result.add_block(prefix, index, masks, block_counts, summary, keep_masks)
        tensors, shapes = _block_tensors(masks, linears, method.updates_weights)
        return tensors, {"summary": summary, "planned": block_counts, "shapes": shapes}, outputs

    def restore(index: int, block: torch.nn.Module, inputs: BlockInputs | None,
                tensors: dict[str, torch.Tensor], record: dict):
        outputs = run_block(block, inputs, device) if inputs is not None and propagation == "dense" else None
        masks = _apply_stored_block(block, tensors, record)
        if inputs is not None and propagation != "dense":
            outputs = run_block(block, inputs, device)
        result.add_block(prefix, index, masks, record["planned"], record["summary"], keep_masks)
        return outputs

    walk_blocks(bundle, encoded, device, measure, restore, store, needs_inputs=method.needs_calibration,
                progress=progress, desc=f"{method.name} blocks")
    return result


#: scalers(index) -> (per-Linear scaler of block `index` by the block's own Linear names, its summary)
Scalers = Callable[[int], "tuple[dict[str, torch.Tensor], dict]"]


@torch.no_grad()
def prune_from_scalers(bundle: ModelBundle, scalers: Scalers, counts: dict[str, int], structure: Structure,
                       device: torch.device, progress: bool = True, store: BlockStore | None = None,
                       keep_masks: bool = True) -> PruneResult:
    """Wanda-family masks (|W| * sqrt(scaler), lowest of each row, as `Wanda.prune`) from scalers
    measured elsewhere: no forward at all. With dense propagation a block's Wanda or AMIA-Wanda
    scaler does not depend on any mask, so the stats pass can measure it (`dense_pass`'s selection)
    and this gives the masks `prune_blocks` would, bit for bit. Resumable through `store` like
    `prune_blocks`; every rank computes the same masks from the same scalers (no broadcast)."""
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    result = PruneResult()

    def measure(index: int, block: torch.nn.Module, inputs: BlockInputs | None, want_outputs: bool):
        linears = find_linears(block)
        block_counts = {name: counts[f"{prefix}.{index}.{name}"] for name in linears}
        block_scalers, summary = scalers(index)
        masks = {}
        for name, linear in linears.items():
            scores = wanda_scores(linear.weight, block_scalers[name].to(linear.weight.device))
            mask = wanda_masks(scores, block_counts[name], structure)
            apply_mask(linear, mask)
            masks[name] = mask.cpu()
        result.add_block(prefix, index, masks, block_counts, summary, keep_masks)
        tensors, shapes = _block_tensors(masks, linears, False)
        return tensors, {"summary": summary, "planned": block_counts, "shapes": shapes}, None

    def restore(index: int, block: torch.nn.Module, inputs: BlockInputs | None,
                tensors: dict[str, torch.Tensor], record: dict):
        result.add_block(prefix, index, _apply_stored_block(block, tensors, record), record["planned"], record["summary"],
                         keep_masks)
        return None

    walk_blocks(bundle, [], device, measure, restore, store, needs_inputs=False, progress=progress,
                desc="masks from stored scalers")
    return result
