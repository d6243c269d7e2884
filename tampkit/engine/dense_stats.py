"""The dense statistics pass (TAMP Phase A; also OWL's): one dense forward of every block.

Per decoder Linear it gathers, over the calibration samples:
- the DAS similarity terms of its outputs, averaged over the samples where each term is defined;
- Wanda's input statistic (mean over samples of per-sample sums of x^2) on dense inputs, from
  which OWL's per-block outlier ratios follow for any threshold.
Both are small, so they are kept per block (one file each, see `block_store`) under a fingerprint
of everything they depend on (the stats stage's): a sweep over methods and sparsities pays for this pass once, and an
interrupted pass resumes at the first missing block.

One pass for TAMP (issue 20): under dense propagation every block of the masks pass sees the very
inputs this pass sees, so a `selection` scorer (AMIA-Wanda) can measure its statistic in the same
forward: its per-Linear scaler (and its block summary) go to a second block store with their own
fingerprint, and the masks stage then needs no forward (`tampkit.engine.masking.prune_from_scalers`).
The dense statistics themselves are the same bits with or without it (the attention-row recorder
delegates to the model's own attention; tested), so they keep the stats stage's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tampkit.core import diversity
from tampkit.store.block_store import BlockStore
from tampkit.core.errors import UsageError
from tampkit.core.das_terms import das_terms
from tampkit.core.diversity import TermAverager
from tampkit.core.output_grams import OutputGrams, widens
from tampkit.core.ranks import current_ranks, sum_in_order
from tampkit.core.types import SampleContext
from tampkit.models.adapters import ModelBundle, find_linears
from tampkit.engine.attention_rows import record_last_rows
from tampkit.engine.runner import BlockInputs, observe_linears, run_block, walk_blocks
from tampkit.methods.base import PruningMethod


@dataclass
class DenseStats:
    """Per full Linear name: averaged similarity terms (empty without terms) and Wanda scaler."""

    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    scalers: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprint: str = ""

    def add_block(self, prefix: str, index: int, scalers: dict[str, torch.Tensor],
                  terms: dict[str, dict[str, float]] | None) -> None:
        for name, scaler in scalers.items():
            self.scalers[f"{prefix}.{index}.{name}"] = scaler
            if terms is not None:
                self.terms[f"{prefix}.{index}.{name}"] = terms[name]

    @classmethod
    def from_store(cls, bundle: ModelBundle, store: BlockStore) -> DenseStats:
        """The statistics of a finished stats stage; every block file must be there and intact."""
        prefix, layers = bundle.adapter.decoder_layers(bundle.model)
        stats = cls(fingerprint=store.fingerprint)
        for index in range(len(layers)):
            stored = store.load(index)
            if stored is None:
                raise UsageError("stats", f"block {index} has no valid file in {store.folder}", "rerun the stats stage")
            stats.add_block(prefix, index, stored[0], stored[1]["terms"] or None)
        return stats

    def diversities(self) -> dict[str, float]:
        return {name: diversity.diversity(terms) for name, terms in self.terms.items()}


class _BothStores:
    """The dense statistics' store and the selection's store as one, for `walk_blocks`: a block is
    stored when both files are valid; either one missing measures the block again (both files)."""

    def __init__(self, stats: BlockStore, selection: BlockStore) -> None:
        self.stats, self.selection = stats, selection

    def path(self, index: int):
        return self.stats.path(index)

    def valid(self, index: int) -> bool:
        return self.stats.valid(index) and self.selection.valid(index)

    def load(self, index: int):
        first, second = self.stats.load(index), self.selection.load(index)
        if first is None or second is None:
            return None
        return first[0], {**first[1], "selection": second}

    def save(self, index: int, tensors: dict[str, torch.Tensor], record: dict) -> None:
        selected_tensors, selected_record = record.pop("selection")
        self.selection.save(index, selected_tensors, selected_record)  # first: a run killed right after the
        self.stats.save(index, tensors, record)                        # stats file has both


def dense_pass(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                positive_only: bool, with_terms: bool, progress: bool, store: BlockStore | None,
                selection: PruningMethod | None = None, selection_store: BlockStore | None = None) -> DenseStats:
    """The dense statistics of every block (read back from `store` where valid).

    With a `selection` scorer (one whose `input_norms(name)` is a per-input-channel scaler, e.g.
    AMIA-Wanda) and its `selection_store`, the same forward also measures that scorer on the dense
    inputs; its scalers and `block_summary()` go to `selection_store`, one file per block."""
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    stats = DenseStats()
    if (selection is None) != (selection_store is None):
        raise ValueError("a selection scorer needs its own store, and the other way round")
    walk_store = store if selection_store is None or store is None else _BothStores(store, selection_store)

    def measure(index: int, block: torch.nn.Module, inputs: BlockInputs | None, want_outputs: bool):
        assert inputs is not None
        scalers, terms, outputs, selected = _measure_block(block, inputs, device, positive_only, with_terms, selection)
        stats.add_block(prefix, index, scalers, terms if with_terms else None)
        record: dict = {"terms": terms}
        if selected is not None:
            record["selection"] = selected
        return scalers, record, outputs

    def restore(index: int, block: torch.nn.Module, inputs: BlockInputs | None,
                tensors: dict[str, torch.Tensor], record: dict):
        stats.add_block(prefix, index, tensors, record["terms"] if with_terms else None)
        return run_block(block, inputs, device) if inputs is not None else None

    walk_blocks(bundle, encoded, device, measure, restore, walk_store, progress=progress, desc="dense statistics")
    return stats


def _measure_block(block: torch.nn.Module, inputs: BlockInputs, device: torch.device, positive_only: bool,
                   with_terms: bool, selection: PruningMethod | None = None):
    """One dense forward of a block over all samples: (Wanda scalers, averaged terms, outputs, and
    with a `selection` scorer its (scalers, {"summary": ...}) else None).

    Per-sample values are kept and added in sample order at the end; under torchrun the ranks'
    values are gathered first, so the statistics are the one-process ones bit for bit."""
    linears = find_linears(block)
    sq_per_sample: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    terms_per_sample: list[dict[str, dict[str, float]]] = []
    current: dict[str, dict[str, float]] = {}
    sample: dict[str, SampleContext] = {}
    grams = OutputGrams()  # W^T W of the widening Linears, once per block

    def on_sample(ctx: SampleContext) -> None:
        sample["current"] = ctx

    def observer(name: str, linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
        sq_per_sample[name].append((x * x).sum(0))
        if with_terms:  # per-modality blocks and sums: no N x N Gram matrix (tampkit.core.das_terms)
            wtw = grams.weight_gram(linear) if widens(linear) else None
            current[name] = das_terms(linear, x, y, sample["current"].labels, positive_only, wtw)
        if selection is not None:
            selection.observe(name, linear, x, y, sample["current"])

    def finish(ctx: SampleContext) -> None:
        if with_terms:
            terms_per_sample.append(dict(current))
            current.clear()

    if selection is not None:
        selection.reset()
    with observe_linears(linears, observer):
        if selection is not None and selection.needs_attention:
            with record_last_rows(block) as rows:
                def finish_both(ctx: SampleContext) -> None:
                    finish(ctx)
                    selection.end_sample(ctx, rows.pop())

                outputs = run_block(block, inputs, device, on_sample, finish_both)
        else:
            outputs = run_block(block, inputs, device, on_sample, finish)
    ranks = current_ranks()
    scalers = {}
    for name in linears:
        parts = ranks.concat(torch.stack(sq_per_sample[name]))
        scalers[name] = (sum_in_order(parts) / parts.shape[0]).cpu()
    averagers = {name: TermAverager() for name in linears}
    for sample_terms in (t for part in ranks.gather(terms_per_sample) for t in part):
        for name, terms in sample_terms.items():
            averagers[name].add(terms)
    selected = None
    if selection is not None:
        selection.reduce(ranks)  # torchrun: every rank's samples (one process: nothing to do)
        selected = ({name: selection.input_norms(name).cpu() for name in linears},  # type: ignore[attr-defined]
                    {"summary": selection.block_summary()})
        selection.reset()
    return scalers, {name: averagers[name].means() for name in linears}, outputs, selected
