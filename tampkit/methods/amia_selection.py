"""AMIA's token selection (TAMP, Phase B) as a mixin for any scorer that sums per-token statistics.

Inside one block forward, q/k/v run before the attention that yields the sample's attention row,
so each Linear's input and output rows wait here until the sample's forward ends (`end_sample`);
then every Linear picks its tokens from its own output Gram matrix, and the scorer's `add_rows`
receives only those rows (in token order). One forward per block serves both the attention rows
and the statistics (the official code would need two).

The scorer underneath decides what a row adds: AMIA-Wanda the squared inputs, AMIA-SparseGPT the
Hessian's x x^T. Mixed in first (`class AmiaWanda(AmiaSelection, Wanda)`), so that `observe` and
`reset` here run before the scorer's.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.amia import AmiaParams, amia_select_batch
from tampkit.core.output_grams import OutputGrams
from tampkit.core.ranks import Ranks
from tampkit.core.types import MODALITIES, SampleContext


class AmiaSelection:
    """Feeds the scorer's `add_rows(name, rows)` with the rows AMIA selects per Linear and sample
    (the scorer, after this class in the bases, provides `add_rows`, `reset` and `prune`)."""

    needs_attention = True

    def __init__(self, params: AmiaParams = AmiaParams(), example_sample: int | None = None) -> None:
        self.params = params
        #: Sample whose selected positions are kept for the report's picture (None: none).
        self.example_sample = example_sample
        self.grams = OutputGrams()
        super().__init__()  # the scorer's __init__, which calls reset()

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.grams.reset()
        self.pending: dict[str, tuple[nn.Linear, torch.Tensor, torch.Tensor]] = {}
        self.selected_tokens: dict[str, int] = {}
        self.per_modality: dict[str, list[int]] = {}
        self.example: dict[str, list[int]] = {}

    def observe(self, name: str, linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ctx: SampleContext) -> None:
        self.pending[name] = (linear, x, y)

    def end_sample(self, ctx: SampleContext, attention: torch.Tensor) -> None:
        labels = ctx.labels
        names = list(self.pending)
        picks = self.select(names, attention, labels)
        present = set(int(m) for m in torch.unique(labels))
        for name, chosen in zip(names, picks):
            _, x, _ = self.pending[name]
            self.add_rows(name, x.index_select(0, chosen.sort().values.to(x.device)))  # token order, as the scorer sums
            self.selected_tokens[name] = self.selected_tokens.get(name, 0) + len(chosen)
            counts = torch.bincount(labels[chosen].long(), minlength=len(MODALITIES)).tolist()
            for code, count in enumerate(counts):
                if code in present:
                    self.per_modality.setdefault(MODALITIES[code], []).append(count)
            if ctx.index == self.example_sample:
                self.example[name] = chosen.tolist()
        self.pending = {}

    def reduce(self, ranks: Ranks) -> None:
        """The scorer's statistics, then the selection counts of every rank (in rank order, which
        is sample order) and the example sample's picks from the rank that measured it."""
        super().reduce(ranks)  # type: ignore[misc]
        if not ranks.parallel:
            return
        parts = ranks.gather((self.selected_tokens, self.per_modality, self.example))
        self.selected_tokens = {name: sum(p[0].get(name, 0) for p in parts) for name in self.selected_tokens}
        self.per_modality = {}
        self.example = {}
        for _, per_modality, example in parts:
            for modality, counts in per_modality.items():
                self.per_modality.setdefault(modality, []).extend(counts)
            self.example.update(example)

    def select(self, names: list[str], attention: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Each pending Linear's selected token indices for the current sample."""
        grams = self.grams.stack([self.pending[name] for name in names])
        return amia_select_batch(grams, attention, labels, self.params)

    def block_summary(self) -> dict:
        """Mean tokens selected per (Linear, sample) by modality; the example sample's picks."""
        summary: dict = {"amia_selected": {m: sum(v) / len(v) for m, v in self.per_modality.items()}}
        if self.example:
            summary["amia_example"] = self.example
        return summary
