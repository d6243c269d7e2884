"""The last position's head-averaged attention row of a decoder block, from the block's own forward.

AMIA weighs tokens by how much the last token attends to them. Rather than re-running the block
in eager mode (a second forward and an N x N x heads tensor), we register an attention function
with transformers' `AttentionInterface` that delegates to the model's own implementation (SDPA,
eager, ...) and, on the side, computes the one softmax row we need in fp32 from the query and key
the model hands it: after its own RoPE (1-D or multimodal), before grouped KV heads are repeated.
The row therefore comes from the same pass whose Linear inputs AMIA measures, for every family
whose attention goes through `ALL_ATTENTION_FUNCTIONS` (all transformers 5.x decoders).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_NAME = "tampkit_last_row"
#: Attention modules currently recording, by id: the list their rows are appended to and the
#: implementation name they delegate to.
_RECORDING: dict[int, tuple[list[torch.Tensor], str]] = {}


def last_row_attention(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float | None) -> torch.Tensor:
    """mean over heads of softmax(q_last K^T * scaling + mask_last): [N] in fp32.

    query [1, H, N, d]; key [1, H_kv, N, d] (grouped heads are shared by H / H_kv query heads, as
    transformers' `repeat_kv` does); mask either additive float or boolean (True = attend).
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    q = query[0, :, -1, :].float()
    k = key[0].float().repeat_interleave(heads // kv_heads, dim=0)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    logits = torch.einsum("hd,hnd->hn", q, k) * scale
    if attention_mask is not None:
        last = attention_mask[0, :, -1, : k.shape[1]]
        if last.dtype == torch.bool:
            logits = logits.masked_fill(~last, float("-inf"))
        else:
            logits = logits + last.float()
    return torch.softmax(logits, dim=-1).mean(0)


def _recording_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                         **kwargs: Any) -> tuple[torch.Tensor, Any]:
    rows, original = _RECORDING[id(module)]
    output = _delegate(module, original)(module, query, key, value, attention_mask, scaling=scaling,
                                         dropout=dropout, **kwargs)
    rows.append(last_row_attention(query, key, attention_mask, scaling))
    return output


def _delegate(module: nn.Module, original: str):
    """The function the module would have called: a registered one, or its family's eager code."""
    if original != "eager" and original in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[original]
    family_module = sys.modules[type(module).__module__]
    return family_module.eager_attention_forward


AttentionInterface.register(_NAME, _recording_attention)


def attention_modules(block: nn.Module) -> list[nn.Module]:
    """The block's self-attention modules: those whose config selects an attention implementation."""
    found = []
    for name, module in block.named_modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and "attn" in name.split(".")[-1]:
            found.append(module)
    return found


@contextmanager
def record_last_rows(block: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every forward of `block` appends its last-position attention row to the list.

    Only this block's attention is switched (its config is shared with the other blocks, which do
    not run meanwhile); the previous implementation is restored on exit.
    """
    modules = attention_modules(block)
    if len(modules) != 1:
        raise RuntimeError(f"expected one self-attention module in {type(block).__name__}, found {len(modules)}")
    module = modules[0]
    config = module.config
    original = config._attn_implementation or "eager"
    rows: list[torch.Tensor] = []
    _RECORDING[id(module)] = (rows, original)
    config._attn_implementation = _NAME
    try:
        yield rows
    finally:
        config._attn_implementation = original
        del _RECORDING[id(module)]
