"""The dense statistics pass (TAMP Phase A; also OWL's): one dense forward of every block.

Per decoder Linear it gathers, over the calibration samples:
- the DAS similarity terms of its outputs, averaged over the samples where each term is defined;
- Wanda's input statistic (mean over samples of per-sample sums of x^2) on dense inputs, from
  which OWL's per-block outlier ratios follow for any threshold.
Both are small, so they are cached in one safetensors file keyed by a fingerprint of everything
they depend on: a sweep over methods and sparsities pays for this pass once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from tampkit import __version__, diversity
from tampkit.diversity import TermAverager, similarity_terms_batch
from tampkit.methods.base import SampleContext
from tampkit.models.adapters import ModelBundle, find_linears
from tampkit.output_grams import OutputGrams
from tampkit.runner import (
    BlockInputs,
    capture_block_inputs,
    observe_linears,
    progress_iter,
    run_block,
)


@dataclass
class DenseStats:
    """Per full Linear name: averaged similarity terms (empty without terms) and Wanda scaler."""

    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    scalers: dict[str, torch.Tensor] = field(default_factory=dict)
    fingerprint: str = ""

    def diversities(self) -> dict[str, float]:
        return {name: diversity.diversity(terms) for name, terms in self.terms.items()}

    def save(self, path: Path) -> None:
        """Atomic: temp name, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        metadata = {"fingerprint": self.fingerprint, "terms": json.dumps(self.terms)}
        save_file({k: v.contiguous().cpu() for k, v in self.scalers.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DenseStats:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            scalers = {key: handle.get_tensor(key) for key in handle.keys()}
        return cls(terms=json.loads(metadata.get("terms", "{}")), scalers=scalers,
                   fingerprint=metadata.get("fingerprint", ""))


def stats_fingerprint(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], positive_only: bool,
                      with_terms: bool) -> str:
    """Hash of the model (name + decoder weights), the exact inputs, the switches and this code."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": bundle.name, "positive_only": positive_only, "terms": with_terms,
                              "version": __version__}).encode())
    for source in (similarity_terms_batch, _dense_pass, _measure_block, OutputGrams):
        digest.update(inspect.getsource(source).encode())
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    for block in (layers[0], layers[-1]):
        for linear in find_linears(block).values():
            digest.update(linear.weight.detach().float().cpu().numpy().tobytes())
    for batch in encoded:
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def _dense_pass(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                positive_only: bool, with_terms: bool, progress: bool) -> DenseStats:
    prefix, layers = bundle.adapter.decoder_layers(bundle.model)
    inputs = capture_block_inputs(bundle, encoded, device, progress_iter(progress, "capture", len(encoded)))
    stats = DenseStats()
    for index, block in enumerate(tqdm(layers, desc="dense statistics", disable=not progress)):
        original_device = next(block.parameters()).device
        block.to(device)
        scalers, terms, inputs.hidden = _measure_block(block, inputs, device, positive_only, with_terms)
        block.to(original_device)
        for name in scalers:
            stats.scalers[f"{prefix}.{index}.{name}"] = scalers[name]
            if with_terms:
                stats.terms[f"{prefix}.{index}.{name}"] = terms[name]
    return stats


def _measure_block(block: torch.nn.Module, inputs: BlockInputs, device: torch.device, positive_only: bool,
                   with_terms: bool) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]], list[torch.Tensor]]:
    """One dense forward of a block over all samples: (Wanda scalers, averaged terms, outputs)."""
    linears = find_linears(block)
    averagers = {name: TermAverager() for name in linears}
    sq_sums: dict[str, torch.Tensor] = {}
    pending: dict[str, tuple] = {}
    grams = OutputGrams()

    def observer(name: str, linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> None:
        contribution = (x * x).sum(0)
        sq_sums[name] = sq_sums[name] + contribution if name in sq_sums else contribution
        if with_terms:
            pending[name] = (linear, x, y)

    def finish(ctx: SampleContext) -> None:
        """All Linears of the sample at once: one stacked Gram tensor, batched terms."""
        if with_terms:
            names = list(pending)
            terms = similarity_terms_batch(grams.stack([pending[n] for n in names]), ctx.labels, positive_only)
            for name, sample_terms in zip(names, terms):
                averagers[name].add(sample_terms)
            pending.clear()

    with observe_linears(linears, observer):
        outputs = run_block(block, inputs, device, None, finish)
    scalers = {name: (sq_sums[name] / len(inputs)).cpu() for name in linears}
    return scalers, {name: averagers[name].means() for name in linears}, outputs


def dense_stats(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device,
                positive_only: bool = True, with_terms: bool = True, cache_dir: Path | None = None,
                progress: bool = True) -> tuple[DenseStats, bool]:
    """The statistics, from `cache_dir` when a file with the same fingerprint is there.

    Returns (stats, came_from_cache). A cached file whose fingerprint differs is never read; a file
    that cannot be read is recomputed with a warning and replaced.
    """
    fingerprint = stats_fingerprint(bundle, encoded, positive_only, with_terms)
    path = Path(cache_dir) / f"dense-stats-{fingerprint[:16]}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        try:
            cached = DenseStats.load(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file (safetensors raises its own type): recompute
            tqdm.write(f"tamp: warning: unreadable statistics cache {path} ({err}); recomputing")
        else:
            if cached.fingerprint == fingerprint:
                return cached, True
            tqdm.write(f"tamp: warning: statistics cache {path} has another fingerprint; recomputing")
    stats = _dense_pass(bundle, encoded, device, positive_only, with_terms, progress)
    stats.fingerprint = fingerprint
    if path is not None:
        stats.save(path)
    return stats, False
