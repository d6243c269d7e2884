"""ECoFLaP's block scores: a zeroth-order estimate of how much the loss moves when a block moves.

For decoder block b and calibration sample i, the block's prunable weights are moved along seeded
Gaussian noise z (one draw per block and sample), and the next-token loss of the sample is read at
theta + eps z and theta - eps z:

    g_bi = (L_i(theta + eps z) - L_i(theta - eps z)) / (2 eps),   score_b = sum_i |g_bi|

as TAMP's official code runs ECoFLaP (`--score_method olmezo-gradient_sum`, block granularity),
except that the official code perturbs one weight matrix at a time and sums the matrices' scores per
block (seven times the forwards); the issue that asked for it, and ECoFLaP's paper, perturb the block.
The loss is the mean cross-entropy over the positions whose next token is text (image, video and
audio placeholders are not predicted), as the model's own loss with those labels.

Cost: the blocks before b are the same for both signs, so each sample's input to block b is taken
from one dense pass (as every other statistic here), and only blocks b..L-1 and the head run twice:
about L^2 n block forwards for L blocks and n samples (the official code: 2 L n full forwards per
matrix). The head runs only at the predicted positions. Each block's score goes to its own file, so
an interrupted pass resumes at the first missing block.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from tampkit.core.ranks import current_ranks
from tampkit.core.types import TEXT
from tampkit.engine.runner import BlockInputs, InMemory, residency, run_block, walk_blocks
from tampkit.models.adapters import ModelBundle, find_linears


def noise_seed(seed: int, block: int, sample: int) -> int:
    """The generator seed of block `block`'s noise for sample `sample` (independent draws, fixed)."""
    digest = hashlib.sha256(f"ecoflap:{seed}:{block}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def text_targets(input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, next tokens) of the next-token loss: every position whose next token is text."""
    ids = input_ids.reshape(-1)
    positions = torch.nonzero(labels[1:] == TEXT).reshape(-1)
    return positions, ids[positions + 1]


@torch.no_grad()
def head_loss(hidden: torch.Tensor, norm: nn.Module, head: nn.Module, positions: torch.Tensor,
              targets: torch.Tensor) -> float:
    """Mean next-token cross-entropy (fp32 logits) of the final hidden states at `positions`."""
    states = norm(hidden)[0].index_select(0, positions.to(hidden.device))
    logits = head(states).float()
    return float(torch.nn.functional.cross_entropy(logits, targets.to(logits.device)))


@torch.no_grad()
def losses_from(layers: list[nn.Module], start: int, inputs: BlockInputs, device: torch.device,
                norm: nn.Module, head: nn.Module, targets: list[tuple[torch.Tensor, torch.Tensor]],
                place: Any = None) -> list[float]:
    """Each sample's loss when `inputs` enter block `start` (already its outputs: start = index + 1).

    `place` is the bundle's residency (tampkit.engine.runner.residency): it puts each block on the
    device while it runs."""
    place = place if place is not None else InMemory()
    hidden = inputs.hidden
    for index in range(start, len(layers)):
        with place.block_on(index, layers[index], device):
            hidden = run_block(layers[index], BlockInputs(hidden, inputs.kwargs, inputs.labels), device)
    return [head_loss(h.to(device), norm, head, *t) if t[0].numel() else 0.0 for h, t in zip(hidden, targets)]


def _perturbed_outputs(block: nn.Module, inputs: BlockInputs, device: torch.device, eps: float, seed: int,
                       index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Block `index`'s outputs per sample with its weights at theta + eps z_i and theta - eps z_i."""
    weights = [linear.weight for linear in find_linears(block).values()]
    originals = [w.detach().clone() for w in weights]
    plus, minus = [], []
    try:
        for i in range(len(inputs)):
            generator = torch.Generator().manual_seed(noise_seed(seed, index, inputs.index(i)))
            noise = [torch.randn(w.shape, generator=generator, dtype=torch.float32) for w in weights]
            one = BlockInputs(inputs.hidden[i:i + 1], inputs.kwargs[i:i + 1], inputs.labels[i:i + 1])
            for sign, outputs in ((1.0, plus), (-1.0, minus)):
                with torch.no_grad():
                    for w, w0, z in zip(weights, originals, noise):
                        w.copy_((w0.float() + sign * eps * z.to(w0.device)).to(w.dtype))
                outputs.extend(run_block(block, one, device))
    finally:
        with torch.no_grad():
            for w, w0 in zip(weights, originals):
                w.copy_(w0)
    return plus, minus


def ecoflap_scores(bundle: ModelBundle, encoded: list[dict[str, torch.Tensor]], device: torch.device, eps: float,
                   seed: int, progress: bool, store=None) -> list[float]:
    """score_b = sum over samples of |projected gradient| for every decoder block b (see the module)."""
    model, adapter = bundle.model, bundle.adapter
    _, layers = adapter.decoder_layers(model)
    norm, head = adapter.output_head(model)
    layer_list = list(layers)
    scores: list[float] = [0.0] * len(layer_list)
    targets: list[tuple[torch.Tensor, torch.Tensor]] = []

    def measure(index: int, block: nn.Module, inputs: BlockInputs | None, want_outputs: bool):
        assert inputs is not None
        if not targets:
            for position, labels in enumerate(inputs.labels):  # this rank's samples under torchrun
                targets.append(text_targets(encoded[inputs.index(position)]["input_ids"], labels))
        plus, minus = _perturbed_outputs(block, inputs, device, eps, seed, index)
        with residency(bundle).modules_on(model, (norm, head), device):
            up = losses_from(layer_list, index + 1, BlockInputs(plus, inputs.kwargs, inputs.labels), device, norm, head,
                             targets, residency(bundle))
            down = losses_from(layer_list, index + 1, BlockInputs(minus, inputs.kwargs, inputs.labels), device, norm, head,
                               targets, residency(bundle))
        projected = [(a - b) / (2 * eps) for a, b in zip(up, down)]
        ranks = current_ranks()  # under torchrun: every rank's samples, in sample order
        projected = [g for part in ranks.gather(projected) for g in part]
        scores[index] = sum(abs(g) for g in projected)
        outputs = run_block(block, inputs, device) if want_outputs else None
        return {"score": torch.tensor([scores[index]], dtype=torch.float64)}, {"projected": projected}, outputs

    def restore(index: int, block: nn.Module, inputs: BlockInputs | None, tensors: dict[str, torch.Tensor], record: dict):
        scores[index] = float(tensors["score"][0])
        return run_block(block, inputs, device) if inputs is not None else None

    walk_blocks(bundle, encoded, device, measure, restore, store, progress=progress, desc="ecoflap scores")
    return scores
