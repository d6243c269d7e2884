"""Qwen2-VL inputs without transformers' Qwen2VLProcessor.

That processor insists on a video processor, which needs torchvision (not installable beside our
CPU torch). Images need only the image processor and the tokenizer, so this does the one thing the
processor adds: expand each image pad token to grid_t * grid_h * grid_w / merge_size**2 copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


def expand_pads(prompt: str, pad: str, counts: list[int]) -> str:
    """Each `pad` in `prompt` repeated as many times as its medium has features; consumes the
    leading entries of `counts` (one per pad, in order, shared across a batch's prompts)."""
    pieces = prompt.split(pad)
    if len(pieces) - 1 > len(counts):
        raise ValueError(f"more {pad} markers than media of that kind")
    merged = pieces[0]
    for piece in pieces[1:]:
        merged += pad * counts.pop(0) + piece
    return merged


class Qwen2VLImageTextProcessor:
    """Callable like a processor: (text=[str], images=[PIL]) -> input_ids, pixel_values, grid."""

    image_token = IMAGE_PAD

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        if chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = chat_template

    def __call__(self, text: list[str], images: list[Any] | None = None, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        prompts = list(text)
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            out.update(pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"])
            merge = self.image_processor.merge_size ** 2
            counts = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
            prompts = [expand_pads(prompt, IMAGE_PAD, counts) for prompt in prompts]
        tokens = self.tokenizer(prompts, return_tensors=return_tensors, add_special_tokens=False)
        ids = tokens["input_ids"]
        # Modality type per token (0 text, 1 image, 2 video): the model's mRoPE needs it.
        types = torch.zeros_like(ids)
        types[ids == self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)] = 1
        types[ids == self.tokenizer.convert_tokens_to_ids(VIDEO_PAD)] = 2
        out.update(input_ids=ids, attention_mask=tokens["attention_mask"], mm_token_type_ids=types)
        return out

    def save_pretrained(self, path: str | Path) -> None:
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
