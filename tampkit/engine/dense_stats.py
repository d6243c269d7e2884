"""The dense statistics pass (TAMP Phase A; also OWL's): one dense forward of every block.

Per decoder Linear it gathers, over the calibration samples:
- the DAS similarity terms of its outputs, averaged over the samples where each term is defined;
- Wanda's input statistic (mean over samples of per-sample sums of x^2) on dense inputs, from
  which OWL's per-block outlier ratios follow for any threshold.
Both are small, so they are kept per block (one file each, see `block_store`) under a fingerprint
of everything they depend on (the stats stage's): a sweep over methods and sparsities pays for this pass once, and an
interrupted pass resumes at the first missing block.
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
from tampkit.engine.runner import BlockInputs, observe_linears, run_block, walk_blocks


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


def dense_pass(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                positive_only: bool, with_terms: bool, progress: bool, store: BlockStore | None) -> DenseStats:
    prefix, _ = bundle.adapter.decoder_layers(bundle.model)
    stats = DenseStats()

    def measure(index: int, block: torch.nn.Module, inputs: BlockInputs | None, want_outputs: bool):
        assert inputs is not None
        scalers, terms, outputs = _measure_block(block, inputs, device, positive_only, with_terms)
        stats.add_block(prefix, index, scalers, terms if with_terms else None)
        return scalers, {"terms": terms}, outputs

    def restore(index: int, block: torch.nn.Module, inputs: BlockInputs | None,
                tensors: dict[str, torch.Tensor], record: dict):
        stats.add_block(prefix, index, tensors, record["terms"] if with_terms else None)
        return run_block(block, inputs, device) if inputs is not None else None

    walk_blocks(bundle, encoded, device, measure, restore, store, progress=progress, desc="dense statistics")
    return stats


def _measure_block(block: torch.nn.Module, inputs: BlockInputs, device: torch.device, positive_only: bool,
                   with_terms: bool) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]], list[torch.Tensor]]:
    """One dense forward of a block over all samples: (Wanda scalers, averaged terms, outputs).

    Per-sample values are kept and added in sample order at the end; under torchrun the ranks'
    values are gathered first, so the statistics are the one-process ones bit for bit."""
    linears = find_linears(block)
    sq_per_sample: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    terms_per_sample: list[dict[str, dict[str, float]]] = []
    current: dict[str, dict[str, float]] = {}
    labels: dict[str, torch.Tensor] = {}
    grams = OutputGrams()  # W^T W of the widening Linears, once per block

    def on_sample(ctx: SampleContext) -> None:
        labels["current"] = ctx.labels

    def observer(name: str, linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
        sq_per_sample[name].append((x * x).sum(0))
        if with_terms:  # per-modality blocks and sums: no N x N Gram matrix (tampkit.core.das_terms)
            wtw = grams.weight_gram(linear) if widens(linear) else None
            current[name] = das_terms(linear, x, y, labels["current"], positive_only, wtw)

    def finish(ctx: SampleContext) -> None:
        if with_terms:
            terms_per_sample.append(dict(current))
            current.clear()

    with observe_linears(linears, observer):
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
    return scalers, {name: averagers[name].means() for name in linears}, outputs
