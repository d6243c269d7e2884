"""The dense model's next-token distributions, kept as what its output head reads.

Dense agreement needs the dense distribution p at every text position. Kept as log-probabilities
that is positions x vocabulary floats (2136 x 49153 x 4 bytes = 420 MB for the default evaluation
set); kept as the inputs of the output head (after the final norm) it is positions x hidden size
(4.9 MB), and p follows from one matmul with the head. Pruning touches only decoder Linears, so the
pruned checkpoint carries the same head: the evaluate stage rebuilds p from the stored states with
the pruned model's own head, after checking that the head is the dense one (`head_digest`), and
never loads the dense model. A model whose logits are more than its head's output (soft-capping, a
scale) fails `head_reproduces` when the reference is made, and agreement then runs the dense model
as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tampkit.models.adapters import ModelBundle


def output_head(bundle: ModelBundle) -> torch.nn.Module:
    """The module that maps final hidden states to logits (the lm_head)."""
    head = bundle.model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(bundle.model).__name__} has no output embeddings")
    return head


@contextmanager
def capture_head_inputs(bundle: ModelBundle) -> Iterator[list[torch.Tensor]]:
    """Every forward inside the block appends its output head's input ([batch, positions, hidden],
    on the CPU) to the yielded list."""
    seen: list[torch.Tensor] = []
    handle = output_head(bundle).register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().float().cpu()))
    try:
        yield seen
    finally:
        handle.remove()


def forward_keeping_head_inputs(bundle: ModelBundle, inputs: dict[str, Any], keep: bool,
                                **kwargs: Any) -> tuple[Any, torch.Tensor | None]:
    """The model's output on `inputs` and, with `keep`, its output head's inputs ([batch,
    positions, hidden], CPU float32; None without)."""
    if not keep:
        return bundle.model(**inputs, **kwargs), None
    with capture_head_inputs(bundle) as seen:
        out = bundle.model(**inputs, **kwargs)
    return out, seen[0]


@torch.no_grad()
def head_logprobs(bundle: ModelBundle, states: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """log softmax of the head's logits for `states` ([positions, hidden])."""
    head = output_head(bundle)
    weight = head.weight
    logits = head(states.to(device=device, dtype=weight.dtype)).float().cpu()
    return torch.log_softmax(logits, dim=-1)


def head_digest(bundle: ModelBundle) -> str:
    """SHA-256 of the output head's parameters (bytes and shapes): equal heads, equal digests."""
    digest = hashlib.sha256()
    for name, value in sorted(output_head(bundle).state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def head_reproduces(bundle: ModelBundle, states: torch.Tensor, logprobs: torch.Tensor,
                    device: torch.device | str = "cpu", atol: float = 1e-3) -> bool:
    """Whether the head alone turns `states` into the model's own `logprobs` (to fp32 rounding of
    a matmul done in another shape)."""
    if states.numel() == 0:
        return True
    return bool(torch.allclose(head_logprobs(bundle, states, device), logprobs, atol=atol, rtol=0))
