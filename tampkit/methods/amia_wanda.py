"""AMIA-Wanda (TAMP, Phase B): Wanda whose input statistic uses only the tokens AMIA selects.

Inside one block forward, q/k/v run before the attention that yields the sample's attention
row, so each Linear's input and output rows wait here until the sample's forward ends
(`end_sample`); then every Linear picks its tokens from its own output Gram matrix. One forward
per block serves both the attention rows and the statistics (the official code would need two).
The statistic is the mean over all selected tokens of all samples of x_j^2.
"""

from __future__ import annotations

import torch
from torch import nn

from tampkit.core.amia import AmiaParams, amia_select_batch
from tampkit.core.types import MODALITIES, SampleContext
from tampkit.methods.wanda import Wanda
from tampkit.core.output_grams import OutputGrams


class AmiaWanda(Wanda):
    name = "amia"
    needs_attention = True

    def __init__(self, params: AmiaParams = AmiaParams(), example_sample: int | None = None) -> None:
        self.params = params
        #: Sample whose selected positions are kept for the report's picture (None: none).
        self.example_sample = example_sample
        self.grams = OutputGrams()
        super().__init__()

    def reset(self) -> None:
        super().reset()
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
            self.add_rows(name, x.index_select(0, chosen.sort().values.to(x.device)))  # token order, as Wanda sums
            self.selected_tokens[name] = self.selected_tokens.get(name, 0) + len(chosen)
            counts = torch.bincount(labels[chosen].long(), minlength=len(MODALITIES)).tolist()
            for code, count in enumerate(counts):
                if code in present:
                    self.per_modality.setdefault(MODALITIES[code], []).append(count)
            if ctx.index == self.example_sample:
                self.example[name] = chosen.tolist()
        self.pending = {}

    def select(self, names: list[str], attention: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Each pending Linear's selected token indices for the current sample."""
        grams = self.grams.stack([self.pending[name] for name in names])
        return amia_select_batch(grams, attention, labels, self.params)

    def input_norms(self, name: str) -> torch.Tensor:
        return self.sq_sum[name] / max(self.selected_tokens[name], 1)

    def block_summary(self) -> dict:
        """Mean tokens selected per (Linear, sample) by modality; the example sample's picks."""
        summary: dict = {"amia_selected": {m: sum(v) / len(v) for m, v in self.per_modality.items()}}
        if self.example:
            summary["amia_example"] = self.example
        return summary
